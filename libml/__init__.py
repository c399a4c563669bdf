"""Shared library of the DC3 codebase: data, models, losses, training loop and metrics.

Nothing in this package reads command-line flags; the method scripts read them in ``main()`` and
pass frozen configuration objects in.

Importing the package turns on TensorFlow's oneDNN CPU kernels unless ``TF_ENABLE_ONEDNN_OPTS``
is set: TensorFlow enables them by itself only on CPUs with AVX-512 VNNI, bf16 or AMX, and
elsewhere (AVX2 CPUs such as AMD Zen 3) computes convolutions with Eigen, 2-5x slower per
convolution on the 2-core EPYC of BENCHMARKS.md section 14. It must happen before TensorFlow is
imported, which every script does after ``libml.tf_startup``; ``TF_ENABLE_ONEDNN_OPTS=0`` keeps
TensorFlow's own choice.
"""
import os

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
