"""Console entry points: thin argparse layers over the library functions.

A `TfunetError` is printed
as one line and exits with status 2; anything else is a bug and keeps its traceback.
Each command lives in its own module here (`tfunet.cli.train:main`, ...).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from tfunet.errors import TfunetError
from tfunet.runtime import configure_tensorflow


# The --model help shared by every command that runs a model (a list of one is one model).
ENSEMBLE_HELP = ("; several .keras files, or a K-fold run's saved_models/ folder, make an ensemble "
                 "(probabilities averaged)")


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports errors in one line (no usage dump)."""

    def error(self, message):
        raise TfunetError(message)


def run_command(prog: str, body: Callable[[], object]) -> int:
    """Run a command body; a `TfunetError` becomes one line on stderr and exit status 2.

    TensorFlow's settings (`tfunet.runtime`) are applied first: setting them imports nothing,
    so `--help` and argument errors still answer at once. The body may return an int to choose
    the exit status itself (e.g. 1 when some inputs failed).
    """
    configure_tensorflow()
    try:
        status = body()
    except TfunetError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return status if isinstance(status, int) else 0
