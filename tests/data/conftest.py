"""LGG fixtures: a zip of four shared patients shaped like the Kaggle download, its shards
prepared once per session, and small synthetic kaggle_3m folders for the bad-input cases."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

# The four smallest shared patients (20-21 slices each, all with tumour slices).
SAMPLE_PATIENTS = ("TCGA_CS_4943_20000902", "TCGA_CS_6667_20011105", "TCGA_HT_7680_19970202",
                   "TCGA_HT_7693_19950520")
DOWNLOAD_COPIES = ("kaggle_3m", "lgg-mri-segmentation/kaggle_3m")


@pytest.fixture(scope="session")
def lgg_sample_patients() -> tuple[str, ...]:
    return SAMPLE_PATIENTS


@pytest.fixture(scope="session")
def lgg_zip(lgg_dir, tmp_path_factory) -> Path:
    """archive.zip as downloaded from Kaggle: kaggle_3m/ plus its nested duplicate copy."""
    path = tmp_path_factory.mktemp("download") / "archive.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for copy in DOWNLOAD_COPIES:
            zf.write(lgg_dir / "README.md", f"{copy}/README.md")
            zf.write(lgg_dir / "data.csv", f"{copy}/data.csv")
            for patient in SAMPLE_PATIENTS:
                for tif in sorted((lgg_dir / patient).glob("*.tif")):
                    zf.write(tif, f"{copy}/{patient}/{tif.name}")
    return path


@pytest.fixture(scope="session")
def lgg_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="session")
def lgg_source(lgg_zip, lgg_cache):
    """The zip's slices, prepared into shards once for all tests."""
    from tfunet.data.lgg_tfds import LGGSource

    return LGGSource(lgg_zip, lgg_cache)


def write_slice(folder: Path, patient: str, k: int, rng, tumour: bool = True) -> None:
    image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    mask = np.zeros((256, 256), np.uint8)
    if tumour:
        mask[100:140, 90:150] = 255
    tifffile.imwrite(folder / patient / f"{patient}_{k}.tif", image, photometric="rgb")
    tifffile.imwrite(folder / patient / f"{patient}_{k}_mask.tif", mask, photometric="minisblack")


@pytest.fixture
def make_lgg_folder(tmp_path):
    """make(patients=3, slices=2, tumour=True) -> a kaggle_3m folder of synthetic TIFFs."""

    def make(patients: int = 3, slices: int = 2, tumour: bool = True) -> Path:
        root = tmp_path / "data" / "kaggle_3m"
        rng = np.random.default_rng(0)
        for p in range(patients):
            patient = f"TCGA_XX_{p:04d}_20000101"
            (root / patient).mkdir(parents=True)
            for k in range(1, slices + 1):
                write_slice(root, patient, k, rng, tumour)
        return root

    return make
