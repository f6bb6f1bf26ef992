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


def make_source(config) -> SliceSource:
    """The slice source a config names."""
    if config.dataset == "synthetic":
        from tfunet.data.synthetic import SyntheticSource

        return SyntheticSource(config.num_patients, config.slices_per_patient, config.image_size,
                               config.seed)
    if config.dataset == "lgg":
        from tfunet.data.lgg import LGGSource

        return LGGSource.from_config(config)
    raise TfunetError(f"unknown dataset {config.dataset!r}")


def load_splits(config, source: SliceSource | None = None) -> DataSplits:
    """The config's dataset cut by patients: from `config.split_file` if given, else seeded."""
    source = source or make_source(config)
    ids = sorted(source.patients())
    if not ids:
        raise TfunetError(f"dataset {config.dataset!r} has no slices")
    if config.split_file:
        split = validate_split(read_split_file(config.split_file), ids)
    else:
        split = split_patients(ids, seed=config.seed)
    return DataSplits(source, split)
