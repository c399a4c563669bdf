"""Imported first by every script: TensorFlow starts without its C++ start-up lines.

A fresh process prints, before absl's logging is set up, the oneDNN notice, CPU-feature notes
and, on machines without a GPU, "failed call to cuInit" error lines: noise, not errors of the run.
Importing this module (before ``tensorflow``) sets ``TF_CPP_MIN_LOG_LEVEL=2`` unless it is set,
then imports TensorFlow and lists its devices (where those lines are printed) with the process's
stderr pointed at /dev/null. A failing import still raises its Python error, printed as usual.

``DC3_TF_LOGS=1`` shows every line again (and leaves ``TF_CPP_MIN_LOG_LEVEL`` alone), e.g. to see
why a GPU is not found.
"""
import contextlib
import os
import sys

SHOW = 'DC3_TF_LOGS'


@contextlib.contextmanager
def _stderr_to_devnull():
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to hide
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def start_quietly():
    if os.environ.get(SHOW) == '1' or 'tensorflow' in sys.modules:
        return
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    with _stderr_to_devnull():
        import tensorflow as tf
        tf.config.list_physical_devices()


start_quietly()
