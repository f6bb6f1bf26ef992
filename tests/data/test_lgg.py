"""The LGG loader: finding the data, the TFDS shards, bad input, training on it."""

from __future__ import annotations

import logging
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tfunet.config import make_config
from tfunet.data import lgg_tfds
from tfunet.data.lgg import Location, locate
from tfunet.data.lgg_tfds import LGGSource
from tfunet.errors import TfunetError

BAD_PATIENT = "TCGA_XX_0000_20000101"


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def zip_of(path: Path, names) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name in names:
            zf.writestr(name, b"")
    return path


SLICE = "TCGA_A_1_2000/TCGA_A_1_2000_1.tif"


@pytest.mark.parametrize("files, given, expected", [
    ([f"kaggle_3m/{SLICE}"], "kaggle_3m", "kaggle_3m"),
    ([f"kaggle_3m/{SLICE}"], ".", "kaggle_3m"),
    ([f"lgg-mri-segmentation/kaggle_3m/{SLICE}", f"kaggle_3m/{SLICE}"], ".", "kaggle_3m"),
    ([f"lgg-mri-segmentation/kaggle_3m/{SLICE}"], ".", "lgg-mri-segmentation/kaggle_3m"),
    ([f"my_copy/{SLICE}"], "my_copy", "my_copy"),  # patient folders in a folder of any name
])
def test_locate_folder(tmp_path, files, given, expected):
    touch(tmp_path, *files)
    assert locate(tmp_path / given) == Location(tmp_path / expected)


@pytest.mark.parametrize("members, expected_prefix", [
    ([f"kaggle_3m/{SLICE}", f"lgg-mri-segmentation/kaggle_3m/{SLICE}"], "kaggle_3m/"),
    ([f"lgg-mri-segmentation/kaggle_3m/{SLICE}", f"kaggle_3m/{SLICE}"], "kaggle_3m/"),
    ([f"lgg-mri-segmentation/kaggle_3m/{SLICE}"], "lgg-mri-segmentation/kaggle_3m/"),
    ([SLICE], ""),
])
def test_locate_zip_takes_the_shallowest_copy(tmp_path, members, expected_prefix):
    archive = zip_of(tmp_path / "archive.zip", members)
    assert locate(archive) == Location(archive, expected_prefix)
    assert locate(tmp_path) == Location(archive, expected_prefix)  # a folder holding the zip


@pytest.mark.parametrize("setup, message", [
    (lambda p: p / "missing", "data folder not found: {p}/missing"),
    (lambda p: p, "data folder is empty: {p}"),
    (lambda p: touch(p, "notes.txt") or p, "no kaggle_3m folder, patient folders or LGG zip archive in {p}"),
    (lambda p: touch(p, "data.tar") or p / "data.tar", "{p}/data.tar is neither a folder nor a zip archive"),
    (lambda p: zip_of(p / "a.zip", ["other/x.txt"]), "no kaggle_3m folder in zip archive {p}/a.zip"),
    (lambda p: touch(p, "kaggle_3m/README.md") or p,
     "no LGG slices (TCGA_*/<patient>_<k>.tif with <patient>_<k>_mask.tif) in {p}/kaggle_3m"),
])
def test_data_dir_errors_are_one_line(tmp_path, setup, message):
    data_dir = setup(tmp_path)
    with pytest.raises(TfunetError) as info:
        LGGSource(data_dir, tmp_path / "cache")
    assert str(info.value) == message.format(p=tmp_path)
    assert not list((tmp_path / "cache").rglob("dataset_info.json"))


def test_from_config_needs_a_data_dir():
    with pytest.raises(TfunetError, match="^--data-dir is required for dataset 'lgg'$"):
        LGGSource.from_config(make_config({"dataset": "lgg"}, validate=False))


def test_zip_download_counts_each_patient_once(lgg_source, lgg_dir, lgg_sample_patients):
    expected = {p: len([f for f in (lgg_dir / p).glob("*.tif") if not f.stem.endswith("_mask")])
                for p in lgg_sample_patients}
    assert lgg_source.patients() == expected


def test_shard_slices_match_the_tiffs(lgg_source, lgg_dir, lgg_sample_patients):
    patient = lgg_sample_patients[0]
    ds = lgg_source.dataset([patient])
    assert ds.element_spec["image"].shape == (256, 256, 3)
    assert ds.element_spec["mask"].shape == (256, 256, 1)
    elements = list(ds.as_numpy_iterator())
    assert sorted(e["slice"] for e in elements) == list(range(1, len(elements) + 1))
    for e in elements:
        assert e["patient_id"].decode() == patient
        stem = lgg_dir / patient / f"{patient}_{e['slice']}"
        np.testing.assert_array_equal(e["image"], tifffile.imread(f"{stem}.tif"))
        np.testing.assert_array_equal(e["mask"][..., 0], tifffile.imread(f"{stem}_mask.tif") // 255)
    assert any(e["mask"].any() for e in elements)


def test_shards_load_by_path_and_are_not_beside_the_data(lgg_source, lgg_zip, lgg_cache):
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(lgg_source.builder.data_dir)
    assert builder.info.splits[lgg_tfds.SPLIT].num_examples == sum(lgg_source.patients().values())
    assert Path(lgg_source.builder.data_dir).is_relative_to(lgg_cache)
    assert sorted(p.name for p in lgg_zip.parent.iterdir()) == ["archive.zip"]


def test_shards_are_reused(lgg_source, lgg_zip, lgg_cache, monkeypatch):
    def fail(*args):
        raise AssertionError("shards were prepared again")

    monkeypatch.setattr(lgg_tfds.LggMriSegmentation, "_generate_examples", fail)
    again = LGGSource(lgg_zip, lgg_cache)
    assert again.builder.data_dir == lgg_source.builder.data_dir
    assert again.patients() == lgg_source.patients()


def test_builder_loads_by_name_without_network(lgg_zip, lgg_sample_patients, tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    def no_network(*args):
        raise AssertionError("the builder tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    builder = tfds.builder("lgg_mri_segmentation", data_dir=tmp_path)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=lgg_zip.parent))
    assert builder.info.splits["slices"].num_examples == 82
    assert set(builder.info.metadata["patients"]) == set(lgg_sample_patients)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


def _write(path: Path, array: np.ndarray) -> None:
    tifffile.imwrite(path, array)


BAD_CASES = {
    "broken TIFF": ("_1.tif", lambda p: p.write_bytes(b"not a tiff at all"), "unreadable TIFF"),
    "truncated TIFF": ("_1.tif", _truncate, "truncated TIFF"),
    "missing mask": ("_1.tif", lambda p: p.with_name(p.stem + "_mask.tif").unlink(),
                     f"missing mask {BAD_PATIENT}_1_mask.tif"),
    "mask without image": ("_1_mask.tif", lambda p: p.with_name(p.name.replace("_mask", "")).unlink(),
                           "mask without an image"),
    "mask shape": ("_1_mask.tif", lambda p: _write(p, np.zeros((128, 256), np.uint8)),
                   "mask shape 128x256 is not the image's height x width 256x256"),
    "image shape": ("_1.tif", lambda p: _write(p, np.zeros((256, 256), np.uint8)),
                    "image is uint8 256x256, expected uint8 256x256x3"),
    "mask values": ("_1_mask.tif", lambda p: _write(p, np.full((256, 256), 7, np.uint8)),
                    "mask values must be 0 or 255, found 7"),
    "file name": ("_x.tif", lambda p: p.write_bytes(b""), "unexpected file name"),
}


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_file_fails_naming_it_or_is_skipped(make_lgg_folder, tmp_path, caplog, case):
    suffix, spoil, reason = BAD_CASES[case]
    root = make_lgg_folder()
    bad = root / BAD_PATIENT / f"{BAD_PATIENT}{suffix}"
    spoil(bad)
    with pytest.raises(TfunetError) as info:
        LGGSource(root, tmp_path / "cache")
    assert str(info.value).startswith(f"{bad}: {reason}")
    assert str(info.value).endswith("; pass --skip-bad to skip bad files")
    assert "\n" not in str(info.value)

    with caplog.at_level(logging.WARNING, logger="tfunet.data.lgg"):
        source = LGGSource(root, tmp_path / "cache", skip_bad=True)
    assert f"skipped 1 bad LGG file(s):\n  {bad}: {reason}" in caplog.text
    assert source.patients()[BAD_PATIENT] == (2 if case == "file name" else 1)


def test_skip_bad_lists_every_skipped_file_and_reused_shards_still_fail(make_lgg_folder, tmp_path, caplog):
    root = make_lgg_folder()
    spoiled = []
    for case in ("broken TIFF", "mask values", "missing mask"):
        suffix, spoil, _ = BAD_CASES[case]
        patient = f"TCGA_XX_{len(spoiled):04d}_20000101"
        spoiled.append(root / patient / f"{patient}{suffix}")
        spoil(spoiled[-1])
    with caplog.at_level(logging.WARNING, logger="tfunet.data.lgg"):
        source = LGGSource(root, tmp_path / "cache", skip_bad=True)
    assert "skipped 3 bad LGG file(s)" in caplog.text
    assert all(str(path) in caplog.text for path in spoiled)
    assert sum(source.patients().values()) == 3
    # Shards prepared with --skip-bad are not silently used without it.
    with pytest.raises(TfunetError, match=r"unreadable TIFF .*\(and 2 more bad file\(s\)\); pass --skip-bad"):
        LGGSource(root, tmp_path / "cache")


def test_all_slices_bad_is_an_error_even_with_skip_bad(make_lgg_folder, tmp_path):
    root = make_lgg_folder(patients=3, slices=1)
    for image in root.glob("*/*_1.tif"):
        image.write_bytes(b"garbage")
    first = root / BAD_PATIENT / f"{BAD_PATIENT}_1.tif"
    with pytest.raises(TfunetError, match=f"^every LGG slice in {root} is bad, e.g. {first}: unreadable TIFF"):
        LGGSource(root, tmp_path / "cache", skip_bad=True)


def test_trains_on_a_folder_without_tumour(make_lgg_folder, tmp_path):
    from tfunet.train import train

    root = make_lgg_folder(patients=3, slices=2, tumour=False)
    config = make_config({"image_size": 32, "base_filters": 4, "depth": 2, "epochs": 1, "batch_size": 4,
                          "dataset": "lgg", "data_dir": str(root),
                          "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")})
    assert config.augment  # on by default for real data
    results = train(config, verbose=0)
    assert (config.log_dir / "split.json").is_file()
    assert np.isfinite(results["val"]["loss"])


def test_cli_reports_data_dir_errors_in_one_line(tmp_path, capsys):
    from tfunet.cli.train import main

    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["--dataset", "lgg", "--data-dir", str(empty), "--output-dir", str(tmp_path / "out")]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"tfunet-train: error: data folder is empty: {empty}\n"


def test_preparation_keeps_stdout_for_results(make_lgg_folder, tmp_path, capsys):
    """TFDS announces "Downloading and preparing" (it reads the local folder); commands print
    their JSON on stdout, so the announcement goes to stderr."""
    LGGSource(make_lgg_folder(patients=2, slices=1), tmp_path / "cache")
    out, err = capsys.readouterr()
    assert "preparing" not in out and "Downloading and preparing dataset" in err
