"""Atomic writes: a reader (or a crash) never sees a half-written checkpoint, log or figure.
And JSON reads that fail with one line naming the file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from tfunet.errors import TfunetError


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path` (same suffix, which Keras and matplotlib need);
    on success it replaces `path` in one `os.replace`, on failure it is removed and `path`
    keeps its old content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix="".join(path.suffixes) or ".tmp",
                               dir=path.parent)
    os.close(fd)
    os.unlink(tmp)  # writers such as Keras want to create the file themselves
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path, what: str, missing_hint: str = ""):
    """The JSON in `path`; a `TfunetError` naming `what` (e.g. "split file") if it is missing
    or not valid JSON."""
    path = Path(path)
    if not path.is_file():
        raise TfunetError(f"{what} not found: {path}{missing_hint}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TfunetError(f"{what} {path} is not valid JSON: {exc}") from None
