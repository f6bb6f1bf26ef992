"""Patient-level splits: every slice of a patient lands in the same split, so validation and
test scores measure generalisation to new patients, not to neighbouring slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfunet.errors import TfunetError
from tfunet.fileio import read_json, write_json

SPLITS = ("train", "val", "test")


def split_patients(patient_ids, fractions=(0.70, 0.15, 0.15), seed: int = 42) -> dict[str, list[str]]:
    """Shuffle patients with `seed` and cut them into train/val/test by `fractions`.

    Val and test get at least one patient each when there are three or more patients.
    """
    ids = sorted(set(patient_ids))
    if len(ids) < 3:
        raise TfunetError(f"a train/val/test split needs at least 3 patients, found {len(ids)}")
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n_val = max(1, round(fractions[1] * len(ids)))
    n_test = max(1, round(fractions[2] * len(ids)))
    n_train = len(ids) - n_val - n_test
    if n_train < 1:
        raise TfunetError(f"split fractions {fractions} leave no training patient out of {len(ids)}")
    return {
        "train": sorted(order[:n_train]),
        "val": sorted(order[n_train:n_train + n_val]),
        "test": sorted(order[n_train + n_val:]),
    }


def validate_split(split: dict, known_ids, require_train: bool = True) -> dict[str, list[str]]:
    """Check a split: the three lists exist, share no patient, and name known patients only.
    require_train: training needs a training patient; scoring does not (a split file used only
    to pick test patients may leave train and val empty)."""
    missing = [name for name in SPLITS if name not in split]
    if missing:
        raise TfunetError(f"split is missing list(s): {', '.join(missing)}")
    known = set(known_ids)
    seen: dict[str, str] = {}
    for name in SPLITS:
        if not isinstance(split[name], list) or not all(isinstance(p, str) for p in split[name]):
            raise TfunetError(f"split list {name!r} must be a list of patient ids")
        for pid in split[name]:
            if pid in seen:
                raise TfunetError(f"patient {pid} is in both {seen[pid]!r} and {name!r}")
            if pid not in known:
                raise TfunetError(f"patient {pid} in split {name!r} is not in the dataset")
            seen[pid] = name
    if require_train and not split["train"]:
        raise TfunetError("split has no training patient")
    return {name: list(split[name]) for name in SPLITS}


def read_split_file(path: str | Path) -> dict:
    split = read_json(path, "split file")
    if not isinstance(split, dict):
        raise TfunetError(f"split file {path} must hold {{'train': [...], 'val': [...], 'test': [...]}}")
    return split


def write_split(split: dict, path: str | Path) -> None:
    write_json(path, split)
