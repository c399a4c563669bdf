"""The project's own error type for problems a user can fix (bad input, bad flags)."""


class DC3Error(Exception):
    """A user-facing error: its message names the problem and the fix, on one line.

    Command-line entry points catch it, print ``error: <message>`` to stderr and exit with status 2,
    so users never see a traceback for a problem in their own data or flags.
    """
