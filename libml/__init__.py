"""Shared library of the DC3 codebase: data, models, losses, training loop and metrics.

Nothing in this package reads command-line flags; the method scripts read them in ``main()`` and
pass frozen configuration objects in.

Importing the package turns on TensorFlow's oneDNN CPU kernels unless ``TF_ENABLE_ONEDNN_OPTS``
is set: TensorFlow enables them by itself only on CPUs with AVX-512 VNNI, bf16 or AMX, and
elsewhere (AVX2 CPUs such as AMD Zen 3) computes convolutions with Eigen, 2-5x slower per
convolution on the 2-core EPYC of BENCHMARKS.md section 14. It must happen before TensorFlow is
imported, which every script does after ``libml.tf_startup``; ``TF_ENABLE_ONEDNN_OPTS=0`` keeps
TensorFlow's own choice. A command line with ``--deterministic 1`` turns oneDNN off instead (on
every CPU, also where TensorFlow would enable it, and also when the environment says 1 -- for
example inherited from a parent process that imported libml): its multi-threaded convolution
gradients vary between runs, which TensorFlow's op determinism does not cover. This is the one place the package
looks at the command line: the kernels are chosen when TensorFlow is imported, before the flags
are parsed.
"""
import os
import sys


def _asks_for_determinism(argv):
    """Whether ``argv`` holds ``--deterministic 1`` (or ``--deterministic=1``)."""
    for i, arg in enumerate(argv):
        value = (arg.split('=', 1)[1] if arg.startswith('--deterministic=')
                 else argv[i + 1] if arg == '--deterministic' and i + 1 < len(argv) else None)
        if value is not None:
            return value.strip() not in ('0', '')
    return False


if _asks_for_determinism(sys.argv[1:]):
    os.environ['TF_ENABLE_ONEDNN_OPTS'] = '0'
else:
    os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
