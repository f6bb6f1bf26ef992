"""Datasets as slice sources, and their patient-level splits.

A source knows its patients and gives a `tf.data.Dataset` of single slices for any subset of
them. Every element, whatever the dataset, is a dict:

    image       uint8  (H, W, 3)   pre-contrast, FLAIR, post-contrast
    mask        uint8  (H, W, 1)   0 or 1
    patient_id  string
    slice       int32             slice number within the patient

New datasets only have to implement `patients()` and `dataset(patient_ids)`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Protocol

from tfunet.data.split import SPLITS, read_split_file, split_patients, validate_split
from tfunet.errors import TfunetError


class SliceSource(Protocol):
    def patients(self) -> dict[str, int]:
        """Patient id -> number of slices."""

    def dataset(self, patient_ids):
        """Unbatched slices of these patients, as dict elements."""


@dataclasses.dataclass
class DataSplits:
    source: SliceSource
    split: dict[str, list[str]]

    def patients(self, name: str) -> list[str]:
        if name == "all":
            return sorted(self.source.patients())
        if name not in SPLITS:
            raise TfunetError(f"unknown split {name!r}; choose train, val, test or all")
        return self.split[name]

    def dataset(self, name: str):
        return self.source.dataset(self.patients(name))

    def num_slices(self, name: str) -> int:
        counts = self.source.patients()
        return sum(counts[p] for p in self.patients(name))


def tumour_burden(source, patient_ids, slices: bool = False) -> dict[str, int]:
    """Tumour pixels per patient, counted on the source's masks (slices: slices with tumour)."""
    import tensorflow as tf

    def tumour_in(mask):
        return tf.cast(tf.reduce_any(mask > 0), tf.int64) if slices else tf.reduce_sum(tf.cast(mask > 0, tf.int64))

    burden = {pid: 0 for pid in patient_ids}
    ds = source.dataset(sorted(patient_ids)).map(lambda e: (e["patient_id"], tumour_in(e["mask"]))).batch(256)
    for pids, pixels in ds.as_numpy_iterator():
        for pid, count in zip(pids, pixels):
            burden[pid.decode() if isinstance(pid, bytes) else str(pid)] += int(count)
    return burden


def make_source(config) -> SliceSource:
    """The slice source a config names."""
    if config.dataset == "synthetic":
        from tfunet.data.synthetic import SyntheticSource

        return SyntheticSource(config.num_patients, config.slices_per_patient, config.image_size,
                               config.seed)
    if config.dataset == "lgg":
        from tfunet.data.lgg_tfds import LGGSource

        return LGGSource.from_config(config)
    raise TfunetError(f"unknown dataset {config.dataset!r}")


def load_splits(config, source: SliceSource | None = None, require_train: bool = True) -> DataSplits:
    """The config's dataset cut by patients: from `config.split_file` if given, else seeded."""
    source = source or make_source(config)
    ids = sorted(source.patients())
    if not ids:
        raise TfunetError(f"dataset {config.dataset!r} has no slices")
    if config.split_file:
        split = validate_split(read_split_file(config.split_file), ids, require_train)
    else:
        split = split_patients(ids, seed=config.seed)
    return DataSplits(source, split)


def config_for_model(meta: dict, **overrides):
    """The model's training config with `overrides` (None = keep), so nothing is retyped.

    The image size always comes from the metadata: it is the model's input size.
    """
    from tfunet.config import FIELDS, make_config

    saved = {k: v for k, v in (meta.get("config") or {}).items() if k in FIELDS}
    given = {k: v for k, v in overrides.items() if v is not None}
    if given.get("dataset", saved.get("dataset")) != saved.get("dataset") and "data_dir" not in given:
        saved.pop("data_dir", None)  # the training data folder belongs to the other dataset
    data_dir = given.get("data_dir", saved.get("data_dir"))
    if data_dir and not Path(data_dir).exists():
        hint = "" if "data_dir" in given else " (the model's training data; pass --data-dir)"
        raise TfunetError(f"data folder not found: {data_dir}{hint}")
    saved.update(given)
    saved["image_size"] = int(meta.get("image_size", saved.get("image_size", 0)))
    return make_config(saved)


def splits_for_model(config, meta: dict, need_split: bool = True):
    """The patient split the model was trained with, from its metadata, on `config`'s data.

    A split file (config.split_file) or another dataset than the model's makes a new split as
    `tfunet-train` would; a split file for scoring may leave train and val empty.
    need_split=False (scoring every patient of a folder, e.g. new patients the model never saw)
    uses no split at all: neither the model's nor its split file need fit the data.
    """
    source = make_source(config)
    if not need_split:
        return DataSplits(source, {"train": [], "val": [], "test": []})
    saved = meta.get("split")
    same_data = (meta.get("config") or {}).get("dataset") == config.dataset
    if config.split_file or not saved or not same_data:
        return load_splits(config, source, require_train=False)
    try:
        return DataSplits(source, validate_split(saved, source.patients(), require_train=False))
    except TfunetError as exc:
        raise TfunetError(f"the model's training split does not fit this data ({exc}); "
                          f"pass --split-file, or --split all") from None
