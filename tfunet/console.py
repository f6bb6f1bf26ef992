"""What a command prints depends on where its output goes: bars for a person at a terminal,
a few lines for a log file (a redirected bar writes every redraw)."""

from __future__ import annotations

import sys


def interactive(stream=None) -> bool:
    """True when `stream` (default stderr, where progress bars go) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def progress_enabled(progress: bool | None) -> bool:
    """An explicit choice wins; None means a bar only on a terminal."""
    return interactive() if progress is None else progress
