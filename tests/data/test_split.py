"""Patient-level splits of the LGG shards: no patient leaks, seeds and split files reuse shards."""

from __future__ import annotations

import json

import pytest

from tfunet.config import make_config
from tfunet.data import lgg_tfds
from tfunet.data.sources import load_splits
from tfunet.data.split import split_patients


@pytest.mark.parametrize("n, sizes", [(3, (1, 1, 1)), (24, (16, 4, 4)), (110, (78, 16, 16))])
def test_split_sizes_and_seeding(n, sizes):
    ids = [f"p{i:03d}" for i in range(n)]
    split = split_patients(ids, seed=7)
    assert tuple(len(split[name]) for name in ("train", "val", "test")) == sizes
    assert sorted(split["train"] + split["val"] + split["test"]) == ids
    assert split_patients(list(reversed(ids)), seed=7) == split  # input order does not matter
    if n > 3:
        assert split_patients(ids, seed=8) != split


@pytest.fixture
def lgg_config(lgg_zip, lgg_cache, tmp_path):
    def make(**overrides):
        return make_config({"dataset": "lgg", "data_dir": str(lgg_zip), "cache_dir": str(lgg_cache),
                            "output_dir": str(tmp_path), **overrides})

    return make


def patients_in(dataset) -> list[str]:
    return [pid.decode() for pid in dataset.map(lambda e: e["patient_id"]).as_numpy_iterator()]


@pytest.mark.parametrize("seed", [1, 2])
def test_no_patient_leaks_across_splits(lgg_source, lgg_config, seed):
    splits = load_splits(lgg_config(seed=seed), source=lgg_source)
    seen = {name: patients_in(splits.dataset(name)) for name in ("train", "val", "test")}
    for name, ids in seen.items():
        assert set(ids) == set(splits.split[name])
        assert len(ids) == splits.num_slices(name)
    assert not set(seen["train"]) & set(seen["val"])
    assert not set(seen["train"]) & set(seen["test"])
    assert not set(seen["val"]) & set(seen["test"])
    everything = patients_in(splits.dataset("all"))
    assert sorted(everything) == sorted(seen["train"] + seen["val"] + seen["test"])
    assert len(everything) == splits.num_slices("all") == sum(lgg_source.patients().values())


def test_new_seed_and_split_file_reuse_the_shards(lgg_source, lgg_config, tmp_path, monkeypatch):
    def fail(*args):
        raise AssertionError("shards were prepared again")

    monkeypatch.setattr(lgg_tfds.LggMriSegmentation, "_generate_examples", fail)
    ids = sorted(lgg_source.patients())
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": ids[:2], "val": [ids[2]], "test": [ids[3]]}))
    splits = load_splits(lgg_config(seed=123, split_file=str(split_file)))
    assert splits.split == {"train": ids[:2], "val": [ids[2]], "test": [ids[3]]}
    assert set(patients_in(splits.dataset("val"))) == {ids[2]}
