"""Model metadata: where it lives, defaults filled on read, merges on update, clear errors."""

from pathlib import Path

import pytest

from tfunet.config import make_config
from tfunet.errors import TfunetError
from tfunet.metadata import make_metadata, metadata_path, read_metadata, update_metadata, write_metadata
from tfunet.postprocess import Settings

DEFAULT_POSTPROCESS = Settings().to_metadata()["postprocess"]  # the defaults, defined once in Settings


@pytest.mark.parametrize("name, is_dir, expected", [
    ("best_model.keras", False, "best_model.json"),
    ("unet_int8.tflite", False, "unet_int8.json"),
    ("serving/1", True, "serving/1/tfunet.json"),
])
def test_metadata_path(tmp_path, name, is_dir, expected):
    model = tmp_path / name
    if is_dir:
        model.mkdir(parents=True)
    assert metadata_path(model) == tmp_path / expected


def test_round_trip_and_update(tmp_path):
    config = make_config({"image_size": 64})
    model = tmp_path / "m.keras"
    write_metadata(model, make_metadata(config, {"train": ["a"], "val": ["b"], "test": ["c"]}))
    meta = read_metadata(model)
    assert meta["image_size"] == 64 and meta["split"]["val"] == ["b"]
    assert meta["config"] == {**config.to_dict(), "output_dir": str(Path.cwd())}
    updated = update_metadata(model, threshold=0.3, postprocess={"min_component_pixels": 20})
    assert updated == read_metadata(model)
    assert updated["threshold"] == 0.3
    assert updated["postprocess"] == {**DEFAULT_POSTPROCESS, "min_component_pixels": 20}


def test_paths_are_stored_absolute(tmp_path, monkeypatch):
    """A model trained with --data-dir ../data must find its data from any working directory."""
    (tmp_path / "data").mkdir()
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    config = make_config({"dataset": "lgg", "data_dir": "../data", "cache_dir": "~/tfds",
                          "split_file": "split.json", "output_dir": "out"})
    saved = make_metadata(config)["config"]
    assert saved["data_dir"] == str(tmp_path / "data")
    assert saved["split_file"] == str(tmp_path / "run" / "split.json")
    assert saved["cache_dir"] == str(Path("~/tfds").expanduser())
    assert saved["output_dir"] == str(tmp_path / "run" / "out")


def test_older_metadata_gets_default_postprocessing(tmp_path):
    (tmp_path / "old.json").write_text('{"image_size": 32}')
    assert read_metadata(tmp_path / "old.keras")["postprocess"] == DEFAULT_POSTPROCESS


@pytest.mark.parametrize("content, message", [
    (None, "model metadata not found: .*written beside the model by tfunet-train"),
    ("[1, 2", "model metadata .* is not valid JSON"),
])
def test_read_errors(tmp_path, content, message):
    if content is not None:
        (tmp_path / "m.json").write_text(content)
    with pytest.raises(TfunetError, match=message):
        read_metadata(tmp_path / "m.keras")
