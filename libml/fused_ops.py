"""Batch norm + leaky ReLU as one CPU op (libml/kernels/bn_leaky_relu.cc), built on first use.

TensorFlow runs the network's batch norm and the leaky ReLU after it as separate kernels, each a
full pass over the activations in memory, and on the CPU it does not fuse them in training. With
AMX bf16 convolutions those passes are most of the step; the fused op makes the bf16 training
step 1.3x faster there (BENCHMARKS.md section 5). It has a CPU kernel only.

``--fused_bn_act`` chooses: ``auto`` (default) uses it when no GPU is visible and the op builds
(a one-line note says so when it does not build), ``on`` requires it (one error line if it cannot
be used), ``off`` keeps TensorFlow's kernels. The two paths have the same variables and
checkpoints, so a run can resume with either; they agree to float rounding.

The op is compiled with ``g++`` against the installed TensorFlow's headers (in its wheel) into
``$DC3_KERNEL_DIR`` (default ``~/.cache/dc3/kernels``), named by a hash of the source, the flags
and the TensorFlow version, so an edit or an upgrade rebuilds and other runs reuse it.
``python -m libml.fused_ops`` builds it ahead of a run (e.g. in an image) and prints where and how
long it took.
"""
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

from libml.errors import DC3Error

MODES = ('auto', 'on', 'off')
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'kernels', 'bn_leaky_relu.cc')


class BuildError(RuntimeError):
    """The op could not be built or loaded (no compiler, a compile error, a bad library)."""


def kernel_dir():
    return os.environ.get('DC3_KERNEL_DIR') or os.path.join(
        os.path.expanduser('~'), '.cache', 'dc3', 'kernels')


def _cpu_flags():
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            for line in f:
                if line.startswith('flags'):
                    return set(line.split(':', 1)[1].split())
    except OSError:
        pass
    return set()


def arch_flags():
    """AVX2 + FMA code where the CPU has them (x86-64 since 2013), else the compiler's default.

    The op is memory-bound: wider vectors than AVX2 measured no faster.
    """
    return ['-march=x86-64-v3'] if {'avx2', 'fma', 'bmi2'} <= _cpu_flags() else []


def build(compiler='g++', out_dir=None, source=None):
    """Path of the compiled op, compiling it first unless this source was built already.

    Written to a temporary file and renamed into place, so concurrent runs never load a
    half-written library.
    """
    import tensorflow as tf
    source = source or SOURCE
    out_dir = out_dir or kernel_dir()
    flags = (['-std=c++17', '-shared', '-fPIC', '-O3', '-w'] + arch_flags()
             + tf.sysconfig.get_compile_flags())
    link = tf.sysconfig.get_link_flags()
    with open(source, 'rb') as f:
        digest = hashlib.sha256(f.read() + repr((flags, link, tf.__version__)).encode())
    target = os.path.join(out_dir, f'bn_leaky_relu-{digest.hexdigest()[:16]}.so')
    if os.path.exists(target):
        return target
    if shutil.which(compiler) is None:
        raise BuildError(f'{compiler} not found (install a C++17 compiler, e.g. apt-get install '
                         'g++)')
    try:
        os.makedirs(out_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix='.so', dir=out_dir)
    except OSError as err:
        raise BuildError(f'cannot write to {out_dir} ({err.strerror}); set DC3_KERNEL_DIR to a '
                         'writable folder') from None
    os.close(fd)
    try:
        done = subprocess.run([compiler, source, '-o', tmp] + flags + link,
                              capture_output=True, text=True)
        if done.returncode:
            errors = [line for line in done.stderr.splitlines() if 'error:' in line]
            first = errors[0].strip() if errors else f'{compiler} exited with {done.returncode}'
            raise BuildError(f'compiling {source} failed: {first}')
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


@functools.lru_cache(maxsize=None)
def load():
    """The op module (``batch_norm_leaky_relu``, ``batch_norm_leaky_relu_grad``), gradient set."""
    import tensorflow as tf
    path = build()
    try:
        ops = tf.load_op_library(path)
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as err:
        raise BuildError(f'cannot load {path}: {err.message.splitlines()[0]}; delete it to '
                         'rebuild') from None

    @tf.RegisterGradient('BatchNormLeakyRelu')
    def _gradient(op, dy, *unused):  # the moments get no gradient, as in FusedBatchNormV3
        x, scale, offset = op.inputs
        return tuple(ops.batch_norm_leaky_relu_grad(
            dy, x, scale, offset, op.outputs[1], op.outputs[3], alpha=op.get_attr('alpha')))

    return ops


def resolve(mode, synchronized_replicas=False):
    """Whether the network uses the fused op, for ``--fused_bn_act`` ``mode``.

    ``synchronized_replicas``: batch norm all-reduces its moments (``--sync_bn 1`` with several
    replicas), which the fused op cannot do.
    """
    import tensorflow as tf
    if mode == 'off':  # ModelConfig has checked that mode is one of MODES
        return False
    if tf.config.list_physical_devices('GPU'):
        reason = 'a GPU is visible and the op has only a CPU kernel'
    elif synchronized_replicas:
        reason = '--sync_bn 1 with several replicas needs the all-reduced batch moments'
    else:
        try:
            load()
            return True
        except BuildError as err:
            if mode == 'on':
                raise DC3Error(f'--fused_bn_act on: {err}; or use --fused_bn_act off') from None
            print(f'note: the fused batch norm + leaky ReLU op is unavailable ({err}); using '
                  "TensorFlow's kernels (slower on the CPU; --fused_bn_act off silences this)",
                  file=sys.stderr)
            return False
    if mode == 'on':
        raise DC3Error(f'--fused_bn_act on: {reason}; use --fused_bn_act auto or off')
    return False


def main():
    import time

    import tensorflow  # noqa: F401  (imported first: the time printed is the build's alone)
    start = time.perf_counter()
    try:
        path = build()
    except BuildError as err:
        sys.exit(f'error: {err}')
    print(f'{path} ({time.perf_counter() - start:.1f} s)')


if __name__ == '__main__':
    main()
