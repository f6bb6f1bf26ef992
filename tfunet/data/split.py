"""Patient-level splits: every slice of a patient lands in the same split, so validation and
test scores measure generalisation to new patients, not to neighbouring slices.

A split file is JSON. For one training run it holds three patient lists:

    {"train": [...], "val": [...], "test": [...]}

For K-fold cross-validation (`tfunet-train --folds K`) it holds a `folds` list of K patient
lists, plus an optional `test` list of patients kept out of every fold (train and val may be
absent or empty: fold k's validation part is folds[k], its training part the other folds):

    {"folds": [[...], [...], ...], "test": [...]}
"""

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


def make_folds(burden: dict[str, int], k: int, seed: int = 42) -> list[list[str]]:
    """Deal patients into `k` folds balanced by tumour burden (`burden`: patient -> tumour pixels).

    Patients sorted by burden are cut into strata of k neighbours, and each stratum is dealt
    one patient per fold in a seeded random order, so every fold gets one of the smallest
    tumours, one of the next, ... and fold sizes differ by at most one.
    """
    ids = sorted(burden, key=lambda pid: (burden[pid], pid))
    if k < 2:
        raise TfunetError(f"cross-validation needs at least 2 folds, got {k}")
    if len(ids) < k:
        raise TfunetError(f"{k} folds need at least {k} patients, found {len(ids)}")
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(k)]
    sizes = np.zeros(k, int)
    for start in range(0, len(ids), k):
        stratum = ids[start:start + k]
        # A last, partial stratum goes to the folds that are smallest so far.
        order = rng.permutation(k)
        order = sorted(order, key=lambda f: sizes[f])[:len(stratum)] if len(stratum) < k else order
        for pid, fold in zip(stratum, order):
            folds[fold].append(pid)
            sizes[fold] += 1
    return [sorted(fold) for fold in folds]


def _check_lists(lists: dict, known: set) -> None:
    seen: dict[str, str] = {}
    for name, ids in lists.items():
        if not isinstance(ids, list) or not all(isinstance(p, str) for p in ids):
            raise TfunetError(f"split list {name!r} must be a list of patient ids")
        for pid in ids:
            if pid in seen:
                raise TfunetError(f"patient {pid} is in both {seen[pid]!r} and {name!r}")
            if pid not in known:
                raise TfunetError(f"patient {pid} in split {name!r} is not in the dataset")
            seen[pid] = name


def validate_split(split: dict, known_ids, require_train: bool = True) -> dict[str, list[str]]:
    """Check a split: the three lists exist, share no patient, and name known patients only.
    require_train: training needs a training patient; scoring does not (a split file used only
    to pick test patients may leave train and val empty). A K-fold split file is accepted
    too: its patients outside `test` count as training patients (every one trains some fold)."""
    if "folds" in split:
        folds = validate_folds(split, known_ids)
        return {"train": sorted(p for fold in folds for p in fold), "val": [],
                "test": list(split.get("test") or [])}
    missing = [name for name in SPLITS if name not in split]
    if missing:
        raise TfunetError(f"split is missing list(s): {', '.join(missing)}")
    _check_lists({name: split[name] for name in SPLITS}, set(known_ids))
    if require_train and not split["train"]:
        raise TfunetError("split has no training patient")
    return {name: list(split[name]) for name in SPLITS}


def validate_folds(split: dict, known_ids) -> list[list[str]]:
    """The `folds` of a K-fold split file, checked: at least two non-empty, patient-disjoint
    lists of known patients, none of them in `test`; train and val, if present, are empty."""
    folds = split.get("folds")
    if not isinstance(folds, list) or len(folds) < 2:
        raise TfunetError("split 'folds' must be a list of at least 2 patient lists")
    for name in ("train", "val"):
        if split.get(name):
            raise TfunetError(f"a K-fold split file takes its training and validation patients from "
                              f"'folds'; its {name!r} list must be empty or absent")
    lists = {f"fold {k}": fold for k, fold in enumerate(folds)}
    lists["test"] = split.get("test") or []
    _check_lists(lists, set(known_ids))
    empty = [k for k, fold in enumerate(folds) if not fold]
    if empty:
        raise TfunetError(f"split fold {empty[0]} has no patient")
    return [list(fold) for fold in folds]


def read_split_file(path: str | Path) -> dict:
    split = read_json(path, "split file")
    if not isinstance(split, dict):
        raise TfunetError(f"split file {path} must hold {{'train': [...], 'val': [...], 'test': [...]}}")
    return split


def write_split(split: dict, path: str | Path) -> None:
    write_json(path, split)
