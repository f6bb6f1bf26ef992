"""tfunet.volumes, tfunet-convert and tfunet-predict on NIfTI: real LGG patients through the
converter, orientation, intensity rule, the report, and every bad-input case."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tfunet.cli.convert import main as convert_main
from tfunet.cli.predict import main as predict_main
from tfunet.errors import TfunetError
from tfunet.metadata import update_metadata
from tfunet.metrics import dice
from tfunet.predictor import load_predictor
from tfunet.volumes import (CANONICAL, canonical_affine, case_from_files, find_case, lgg_patient_volumes,
                            predict_case, read_sequences, to_uint8)

PATIENT = "TCGA_CS_4943_20000902"


@pytest.fixture(scope="module")
def model(trained_model, tmp_path_factory) -> Path:
    """The session model with a low threshold, so that it marks enough of a real LGG patient
    for mask comparisons to mean something (it was trained on synthetic slices)."""
    folder = tmp_path_factory.mktemp("nifti_model")
    src = Path(trained_model["model_path"])
    for path in (src, src.with_suffix(".json")):
        shutil.copy(path, folder / path.name)
    update_metadata(folder / src.name, threshold=0.1)
    return folder / src.name


@pytest.fixture(scope="module")
def case_dir(lgg_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("nifti")
    assert convert_main(["lgg-to-nifti", str(lgg_dir / PATIENT), "--out", str(out), "--spacing", "0.9", "0.9", "3"]) == 0
    return out / PATIENT


def _predict(model_path, case_dir, out, **kwargs) -> tuple[np.ndarray, dict]:
    report = predict_case(load_predictor(model_path), find_case(case_dir), out, **kwargs)
    image = nib.load(report["mask"])
    return np.asarray(image.dataobj), report


def test_converter_writes_brats_named_uint8_cases_in_the_canonical_orientation(case_dir, lgg_dir):
    images, masks = lgg_patient_volumes(lgg_dir / PATIENT)
    for suffix, channel in (("t1", 0), ("flair", 1), ("t1ce", 2)):
        image = nib.load(case_dir / f"{PATIENT}_{suffix}.nii.gz")
        assert image.get_data_dtype() == np.uint8
        assert nib.aff2axcodes(image.affine) == CANONICAL
        assert image.header.get_zooms() == pytest.approx((0.9, 0.9, 3.0))
        # Slice k of the volume is TIFF slice k, as seen (anterior up, patient's right on the left).
        np.testing.assert_array_equal(np.moveaxis(np.asarray(image.dataobj), 2, 0), images[..., channel])
    seg = np.moveaxis(np.asarray(nib.load(case_dir / f"{PATIENT}_seg.nii.gz").dataobj), 2, 0)
    np.testing.assert_array_equal(seg, masks)
    assert seg.sum() > 1000


def test_nifti_prediction_equals_tiff_prediction_slice_by_slice(model, case_dir, lgg_dir, tmp_path):
    mask, report = _predict(model, case_dir, tmp_path)
    images, _ = lgg_patient_volumes(lgg_dir / PATIENT)
    expected = load_predictor(model).predict(images)["mask"][..., 0]
    np.testing.assert_array_equal(np.moveaxis(mask, 2, 0), expected)
    assert expected.sum() > 500, "the model marks too little to compare"
    image = nib.load(report["mask"])
    reference = nib.load(case_dir / f"{PATIENT}_flair.nii.gz")
    np.testing.assert_array_equal(image.affine, reference.affine)
    assert image.get_data_dtype() == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert report["intensity"] == "unchanged (already 8-bit)"
    assert report["tumour_voxels"] == int(expected.sum())
    assert report["tumour_volume_ml"] == pytest.approx(expected.sum() * 0.9 * 0.9 * 3 / 1000, abs=1e-3)
    assert report["axial_slices_with_tumour"] == np.flatnonzero(expected.any(axis=(1, 2))).tolist()
    assert report["model"]["threshold"] == 0.1 and report["sequences_replaced_by_flair"] == []
    assert json.loads((tmp_path / f"{PATIENT}_report.json").read_text()) == report


def test_mask_dice_against_the_converted_truth_equals_evaluate(model, case_dir, lgg_dir, tmp_path):
    """With the largest-3-D-component step on, the NIfTI mask's Dice against the converted
    ground truth is the per-patient 3-D Dice tfunet-evaluate reports for that patient."""
    from tfunet.evaluate import evaluate
    from tfunet.data.sources import DataSplits
    from tfunet.data.lgg_tfds import LGGSource

    update_metadata(model, postprocess={"largest_3d_component": True})
    try:
        mask, report = _predict(model, case_dir, tmp_path)
        truth = np.asarray(nib.load(case_dir / f"{PATIENT}_seg.nii.gz").dataobj)
        root = tmp_path / "kaggle_3m"
        root.mkdir()
        (root / PATIENT).symlink_to(lgg_dir / PATIENT, target_is_directory=True)
        splits = DataSplits(LGGSource(root, tmp_path / "cache"), {"train": [], "val": [], "test": [PATIENT]})
        result = evaluate(load_predictor(model), splits, "test", progress=False)
    finally:
        update_metadata(model, postprocess={"largest_3d_component": False})
    assert report["components_3d"] <= 1
    assert dice(mask[None], truth[None], "pooled") == pytest.approx(result.summary["patients"][PATIENT]["dice_3d"])


def _reoriented(case_dir: Path, out: Path, transform) -> Path:
    """The case stored with its axes permuted and flipped, under a consistent affine."""
    out.mkdir()
    for path in case_dir.glob("*.nii.gz"):
        image = nib.load(path)
        data, affine = transform(np.asarray(image.dataobj), image.affine)
        copy = nib.Nifti1Image(data, affine)
        copy.set_data_dtype(np.uint8)
        nib.save(copy, out / path.name)
    return out


def test_another_orientation_gives_the_same_mask_in_world_coordinates(model, case_dir, tmp_path):
    def transform(data, affine):
        # Flip axis 0, then move the slice axis first: (P, L, S) -> (S, A, L).
        flip = nib.orientations.inv_ornt_aff(np.array([[0, -1], [1, 1], [2, 1]]), data.shape)
        data, affine = data[::-1], affine @ flip
        return np.transpose(data, (2, 0, 1)).copy(), affine[:, [2, 0, 1, 3]]

    moved = _reoriented(case_dir, tmp_path / "moved", transform)
    assert nib.aff2axcodes(nib.load(next(moved.glob("*flair*"))).affine) == ("S", "A", "L")
    original, _ = _predict(model, case_dir, tmp_path / "a")
    other, report = _predict(model, moved, tmp_path / "b")
    expected, _ = transform(original, nib.load(next(case_dir.glob("*flair*"))).affine)
    np.testing.assert_array_equal(other, expected)
    assert original.sum() > 500


@pytest.mark.parametrize("dtype, scale", [(np.int16, 4.0), (np.float32, 0.01)])
def test_other_intensity_types_give_nearly_the_same_mask(model, case_dir, tmp_path, dtype, scale):
    """int16 and float32 copies with a linear intensity change go through the intensity rule;
    so does the uint8 case here (rescale_8bit), because the test model, trained on synthetic
    slices, is not robust to the rule's contrast stretch the way an LGG-trained model would need
    to be. The masks then agree up to the rounding of the copies."""
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in case_dir.glob("*.nii.gz"):
        image = nib.load(path)
        data = (np.asarray(image.dataobj).astype(np.float64) * scale).astype(dtype)
        nib.save(nib.Nifti1Image(data, image.affine), copy / path.name)
    reference, _ = _predict(model, case_dir, tmp_path / "a", rescale_8bit=True)
    mask, report = _predict(model, copy, tmp_path / "b")
    assert "percentiles" in report["intensity"]
    assert reference.sum() > 500
    assert dice(mask[None], reference[None], "pooled") >= 0.95


def test_intensity_rule_clips_percentiles_of_non_zero_voxels():
    data = np.zeros((10, 10, 10), np.float32)
    data[1:, 1:, 1:] = np.linspace(100, 1100, 729).reshape(9, 9, 9)
    out = to_uint8(data, passthrough=False)
    assert out.dtype == np.uint8 and out[0, 0, 0] == 0 and out.max() == 255
    low, high = np.percentile(data[data != 0], (0.5, 99.5))
    inside = (data > low) & (data < high)
    np.testing.assert_allclose(out[inside], np.round((data[inside] - low) / (high - low) * 255), atol=0.5)
    assert to_uint8(np.arange(8, dtype=np.uint8).reshape(2, 2, 2), passthrough=True).max() == 7


def test_missing_pre_and_post_are_replaced_by_flair(model, case_dir, tmp_path):
    flair_only = tmp_path / "case"
    flair_only.mkdir()
    shutil.copy(case_dir / f"{PATIENT}_flair.nii.gz", flair_only / "x_flair.nii.gz")
    volumes, replaced = read_sequences(find_case(flair_only))
    assert replaced == ["pre", "post"]
    np.testing.assert_array_equal(volumes["pre"].data, volumes["flair"].data)
    out = tmp_path / "out"
    assert predict_main(["--flair", str(flair_only / "x_flair.nii.gz"), "--model", str(model), "--out", str(out)]) == 0
    assert json.loads((out / "x_report.json").read_text())["sequences_replaced_by_flair"] == ["pre", "post"]


def test_a_4d_file_holds_the_three_sequences(model, case_dir, tmp_path):
    stack = np.stack([np.asarray(nib.load(case_dir / f"{PATIENT}_{s}.nii.gz").dataobj) for s in ("t1", "flair", "t1ce")],
                     axis=-1)
    affine = nib.load(case_dir / f"{PATIENT}_flair.nii.gz").affine
    path = tmp_path / "stack.nii.gz"
    nib.save(nib.Nifti1Image(stack, affine), path)
    reference, _ = _predict(model, case_dir, tmp_path / "a")
    assert predict_main([str(path), "--model", str(model), "--out", str(tmp_path / "b")]) == 0
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "b" / "stack_mask.nii.gz").dataobj), reference)


# --- bad input: one line naming the file, the other cases still predicted, exit status 1 --------

def _write(path: Path, data: np.ndarray, affine=None) -> None:
    nib.save(nib.Nifti1Image(data, canonical_affine() if affine is None else affine), path)


def _bad_cases(root: Path, good: Path) -> dict[str, str]:
    """Folders of bad cases -> the message each must give."""
    cases = {}

    def folder(name):
        path = root / name
        path.mkdir()
        return path

    f = folder("not_nifti")
    (f / "a_flair.nii.gz").write_bytes(b"this is not a NIfTI file")
    cases[f.name] = "a_flair.nii.gz: not a readable NIfTI file"
    f = folder("truncated")
    blob = (good / f"{PATIENT}_flair.nii.gz").read_bytes()
    (f / "a_flair.nii.gz").write_bytes(blob[: len(blob) // 2])
    cases[f.name] = "a_flair.nii.gz: not a readable NIfTI file"
    f = folder("two_d")
    _write(f / "a_flair.nii.gz", np.arange(64, dtype=np.uint8).reshape(8, 8))
    cases[f.name] = "a_flair.nii.gz: 2-D image"
    f = folder("five_d")
    _write(f / "a_flair.nii.gz", np.arange(64, dtype=np.uint8).reshape(2, 2, 2, 2, 4))
    cases[f.name] = "a_flair.nii.gz: 5-D image"
    f = folder("shapes")
    _write(f / "a_flair.nii.gz", np.arange(512, dtype=np.uint8).reshape(8, 8, 8))
    _write(f / "a_t1.nii.gz", np.arange(576, dtype=np.uint8).reshape(8, 8, 9))
    cases[f.name] = "the sequences' shapes or affines disagree"
    f = folder("no_flair")
    _write(f / "a_t1.nii.gz", np.arange(512, dtype=np.uint8).reshape(8, 8, 8))
    cases[f.name] = "no_flair: no FLAIR sequence"
    f = folder("constant")
    _write(f / "a_flair.nii.gz", np.zeros((8, 8, 8), np.float32))
    cases[f.name] = "a_flair.nii.gz: the volume is constant"
    f = folder("nan")
    data = np.ones((8, 8, 8), np.float32)
    data[1, 2, 3] = np.nan
    _write(f / "a_flair.nii.gz", data)
    cases[f.name] = "a_flair.nii.gz: the image data holds NaN"
    return cases


def test_bad_cases_are_named_and_skipped_and_the_rest_is_predicted(model, case_dir, tmp_path, capsys):
    root = tmp_path / "cases"
    root.mkdir()
    shutil.copytree(case_dir, root / PATIENT)
    expected = _bad_cases(root, case_dir)
    out = tmp_path / "out"
    assert predict_main([str(root), "--model", str(model), "--out", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    for name, message in expected.items():
        lines = [line for line in err if f"/{name}" in line]
        assert len(lines) == 1 and message in lines[0] and lines[0].startswith("tfunet-predict: "), (name, err)
    assert (out / f"{PATIENT}_mask.nii.gz").is_file()  # the good case is still predicted
    assert sorted(p.name for p in out.iterdir()) == [f"{PATIENT}_mask.nii.gz", f"{PATIENT}_report.json"]


def test_truncated_gzip_is_caught_on_data_access(tmp_path):
    path = tmp_path / "a_flair.nii.gz"
    _write(tmp_path / "full.nii.gz", np.arange(4096, dtype=np.int16).reshape(16, 16, 16))
    blob = (tmp_path / "full.nii.gz").read_bytes()
    path.write_bytes(blob[: len(blob) - 200])
    nib.load(path)  # nibabel reads lazily: loading the header alone succeeds
    with pytest.raises(Exception):
        gzip.decompress(path.read_bytes())
    with pytest.raises(TfunetError, match="a_flair.nii.gz: not a readable NIfTI file"):
        read_sequences(case_from_files(None, str(path), None))


def test_converter_reports_bad_folders(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert convert_main(["lgg-to-nifti", str(tmp_path / "empty"), str(tmp_path / "missing"),
                         "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "empty: expected LGG slices" in err and "missing: not a folder of LGG slices" in err
    assert convert_main(["lgg-to-nifti", str(tmp_path), "--out", str(tmp_path / "o"), "--spacing", "1", "0", "1"]) == 2


@pytest.mark.parametrize("argv, message", [
    (["--model", "m.keras", "--out", "o"], "give INPUT files or folders, or a NIfTI case with --flair"),
    (["--pre", "t1.nii.gz", "--model", "m.keras", "--out", "o"], "--flair is required with --pre/--post"),
    (["case", "--percentiles", "99", "1", "--model", "m.keras", "--out", "o"], "--percentiles must satisfy"),
])
def test_predict_flags_are_checked_before_any_work(argv, message, capsys):
    assert predict_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tfunet-predict: error: ") and message in err[0]
