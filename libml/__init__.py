"""Shared library of the DC3 codebase: data, models, losses, training loop and metrics.

Nothing in this package reads command-line flags; the method scripts read them in ``main()`` and
pass frozen configuration objects in.
"""
