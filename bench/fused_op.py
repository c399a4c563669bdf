"""Experiment: batch norm + leaky ReLU as one custom CPU op (bench/kernels/bn_leaky_relu.cc).

Not part of the product. The step profile (BENCHMARKS.md section 5) shows TensorFlow running the
batch norm and the leaky ReLU after it as separate kernels that each pass over the activations in
memory; this module builds a C++ op that does both in the fewest passes, so that
``python -m bench.step_speed --ab fused_act`` can measure what such a fusion would gain inside the
real training step. It needs a C++17 compiler (``g++``) and TensorFlow's headers (in the wheel).

    from bench import fused_op
    ops = fused_op.load()                  # compiles once into bench/out/kernels/, then reuses
    models._bn_relu = fused_op.bn_relu     # what --ab fused_act does while it builds the network
"""
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile

import bench

SOURCE = os.path.join(bench.ROOT, 'bench', 'kernels', 'bn_leaky_relu.cc')
BUILD_DIR = os.path.join(bench.ROOT, 'bench', 'out', 'kernels')
# Portable across x86-64 CPUs of the last decade (AVX2, FMA); the op is memory-bound, so wider
# vectors would not help. Other architectures get the compiler's default.
ARCH_FLAGS = ['-march=x86-64-v3'] if platform.machine() in ('x86_64', 'AMD64') else []


class BuildError(RuntimeError):
    """The op could not be compiled (no compiler, or a compile error)."""


def build(compiler='g++'):
    """Path of the compiled op, compiling it first unless this source was built already.

    The library's name carries a hash of the source, the flags and the TensorFlow version, so an
    edit or an upgrade rebuilds; it is written to a temporary file and renamed into place.
    """
    import tensorflow as tf
    flags = (['-std=c++17', '-shared', '-fPIC', '-O3', '-w'] + ARCH_FLAGS
             + tf.sysconfig.get_compile_flags())
    link = tf.sysconfig.get_link_flags()
    with open(SOURCE, 'rb') as f:
        digest = hashlib.sha256(f.read() + repr((flags, link, tf.__version__)).encode())
    target = os.path.join(BUILD_DIR, f'bn_leaky_relu-{digest.hexdigest()[:16]}.so')
    if os.path.exists(target):
        return target
    if shutil.which(compiler) is None:
        raise BuildError(f'{compiler} not found: install a C++17 compiler to build {SOURCE}')
    os.makedirs(BUILD_DIR, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.so', dir=BUILD_DIR)
    os.close(fd)
    try:
        done = subprocess.run([compiler, SOURCE, '-o', tmp] + flags + link,
                              capture_output=True, text=True)
        if done.returncode:
            errors = [line for line in done.stderr.splitlines() if 'error' in line]
            first = errors[0].strip() if errors else f'{compiler} exited with {done.returncode}'
            raise BuildError(f'compiling {SOURCE} failed: {first}')
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


@functools.lru_cache(maxsize=None)
def load():
    """The op module (``batch_norm_leaky_relu``, ``batch_norm_leaky_relu_grad``), gradient set."""
    import tensorflow as tf
    ops = tf.load_op_library(build())

    @tf.RegisterGradient('BatchNormLeakyRelu')
    def _gradient(op, dy, *unused):  # the moments get no gradient, as in FusedBatchNormV3
        x, scale, offset = op.inputs
        return tuple(ops.batch_norm_leaky_relu_grad(
            dy, x, scale, offset, op.outputs[1], op.outputs[3], alpha=op.get_attr('alpha')))

    return ops


@functools.lru_cache(maxsize=None)
def bn_leaky_relu_layer():
    """A ``FusedBatchNormalization`` that also applies leaky ReLU (slope 0.1), fused in training.

    The class is defined on first use (it needs TensorFlow and libml) and then reused.
    """
    import tensorflow as tf

    from libml import models

    class FusedBatchNormLeakyReLU(models.FusedBatchNormalization):
        def call(self, inputs, training=False):
            if not training:  # inference is cheap already; keep TensorFlow's kernels
                return tf.nn.leaky_relu(super().call(inputs, training=False), 0.1)
            outputs, mean, variance, _ = load().batch_norm_leaky_relu(
                inputs, tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32),
                epsilon=self.epsilon, alpha=0.1)
            decay = 1.0 - self.momentum
            self.moving_mean.assign_sub((self.moving_mean - mean) * decay)
            self.moving_variance.assign_sub((self.moving_variance - variance) * decay)
            return outputs

    return FusedBatchNormLeakyReLU


def bn_relu(x, bn):
    """Drop-in for ``libml.models._bn_relu`` (single device, no synchronised batch norm)."""
    return bn_leaky_relu_layer()(epsilon=1e-3, **bn)(x)
