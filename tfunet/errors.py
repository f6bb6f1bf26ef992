"""User-facing errors.

A `TfunetError` is a problem with the user's input (a flag, a file, a folder). The console
commands print its message on one line and exit non-zero, without a traceback; anything
else that escapes is a bug and keeps its traceback.
"""


class TfunetError(ValueError):
    """Bad input, explained in one line."""
