"""Atomic writes keep the old file on failure; JSON reads fail with one line naming the file."""

import json

import pytest

from tfunet.errors import TfunetError
from tfunet.fileio import atomic_path, read_json, write_json


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "log.json"
    write_json(target, {"a": 1})
    write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["log.json"]


def test_a_failed_write_keeps_the_old_content(tmp_path):
    target = tmp_path / "model.keras"
    target.write_text("good")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.suffix == ".keras" and tmp.parent == tmp_path  # writers need the suffix
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]


@pytest.mark.parametrize("content, message", [
    (None, "split file not found: "),
    ("{not json", "is not valid JSON"),
    (b"\xff\xfe\x00", "is not valid JSON"),
])
def test_read_json_errors(tmp_path, content, message):
    path = tmp_path / "split.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(TfunetError, match=message) as info:
        read_json(path, "split file")
    assert "\n" not in str(info.value) and str(path) in str(info.value)
