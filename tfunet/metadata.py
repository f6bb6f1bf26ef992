"""Run metadata that travels beside every saved model.

`best_model.keras` has `best_model.json` beside it (a SavedModel folder has `tfunet.json`
inside). It holds what later commands need so no flag is retyped: input size and channels,
the decision threshold, post-processing, the training config, the split, the tfunet version.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from tfunet.fileio import read_json, write_json
from tfunet.postprocess import Settings
from tfunet.version import __version__



def metadata_path(model_path: str | Path) -> Path:
    model_path = Path(model_path)
    if model_path.is_dir():
        return model_path / "tfunet.json"
    return model_path.with_suffix(".json")


def make_metadata(config, split: dict[str, list[str]] | None = None, **extra: Any) -> dict[str, Any]:
    saved = config.to_dict()
    # Absolute paths, so that evaluate/export find the training data and split from any
    # working directory.
    for key in ("data_dir", "cache_dir", "split_file", "output_dir"):
        if saved.get(key):
            saved[key] = str(Path(saved[key]).expanduser().resolve())
    meta = {
        "tfunet_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "image_size": config.image_size,
        "channels": 3,
        **Settings(threshold=config.threshold).to_metadata(),
        "config": saved,
        "split": split,
    }
    meta.update(extra)
    return meta


def write_metadata(model_path: str | Path, meta: dict[str, Any]) -> Path:
    path = metadata_path(model_path)
    write_json(path, meta)
    return path


def read_metadata(model_path: str | Path) -> dict[str, Any]:
    """The metadata of a saved model; a clear error if it is missing or unreadable."""
    path = metadata_path(model_path)
    meta = read_json(path, "model metadata", " (it is written beside the model by tfunet-train)")
    meta["postprocess"] = {**Settings().to_metadata()["postprocess"], **(meta.get("postprocess") or {})}
    return meta


def update_metadata(model_path: str | Path, **changes: Any) -> dict[str, Any]:
    """Merge `changes` into a model's metadata (e.g. a tuned threshold) and write it back."""
    meta = read_metadata(model_path)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(meta.get(key), dict):
            meta[key] = {**meta[key], **value}
        else:
            meta[key] = value
    write_metadata(model_path, meta)
    return meta
