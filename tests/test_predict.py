"""tfunet.predict and tfunet-predict: one predictor for every model format, masks and overlays on disk."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tifffile
from PIL import Image

from tfunet.cli.predict import main as predict_main
from tfunet.data.sources import load_splits
from tfunet.errors import TfunetError
from tfunet.predict import OVERLAY_ALPHA, overlay, read_image
from tfunet.predictor import load_predictor

FORMATS = ("keras", "saved_model", "tflite")


@pytest.fixture(scope="module")
def tumour_images(trained_model):
    """The four synthetic slices (uint8 H x W x 3, model size) where the briefly trained model
    finds the most tumour, so mask comparisons are not between empty masks."""
    splits = load_splits(trained_model["config"])
    images = np.stack([e["image"] for e in splits.dataset("all").as_numpy_iterator() if e["mask"].any()])
    found = load_predictor(trained_model["model_path"]).predict(images)["mask"].sum(axis=(1, 2, 3))
    return images[np.argsort(found)[::-1][:4]]


@pytest.fixture(scope="module")
def predictors(exported_model):
    return {kind: load_predictor(exported_model[kind]) for kind in FORMATS}


@pytest.mark.parametrize("size", [(64, 64), (50, 90)])
def test_every_format_predicts_the_same(predictors, tumour_images, size, assert_masks_agree):
    images = tf.cast(tf.round(tf.image.resize(tumour_images, size)), tf.uint8).numpy()
    outputs = {kind: predictor.predict(images) for kind, predictor in predictors.items()}
    reference = outputs["keras"]
    assert reference["probabilities"].shape == (len(images), *size, 1)
    assert reference["mask"].dtype == np.uint8 and reference["mask"].any()
    for kind in ("saved_model", "tflite"):
        np.testing.assert_allclose(outputs[kind]["probabilities"], reference["probabilities"], atol=1e-4)
        # Masks may only differ where a probability sits within float error of the threshold.
        assert_masks_agree(outputs[kind]["mask"], reference["mask"], 0.99)
        assert (outputs[kind]["mask"] == reference["mask"]).mean() >= 0.999
    np.testing.assert_array_equal(predictors["tflite"](images), outputs["tflite"]["probabilities"])


@pytest.mark.parametrize("images", [
    np.zeros((1, 64, 64, 3), np.float32),
    np.zeros((64, 64, 3), np.uint8),
    np.zeros((1, 64, 64, 1), np.uint8),
])
@pytest.mark.parametrize("kind", FORMATS)
def test_predictor_rejects_other_arrays(predictors, kind, images):
    with pytest.raises(TfunetError, match="uint8 batch N x H x W x 3"):
        predictors[kind](images)


@pytest.mark.parametrize("name, make, message", [
    ("missing.keras", None, "model not found"),
    ("model.onnx", lambda p: p.write_bytes(b"x"), "must be a .keras file, a SavedModel folder or a .tflite"),
    ("folder", lambda p: p.mkdir(), "not a SavedModel"),
    ("model.tflite", lambda p: p.write_bytes(b"x"), "model metadata not found"),
    ("model.keras", lambda p: p.write_bytes(b"x"), "model metadata not found"),
])
def test_load_predictor_errors(tmp_path, name, make, message):
    path = tmp_path / name
    if make:
        make(path)
    with pytest.raises(TfunetError, match=message):
        load_predictor(path)


def test_load_predictor_reports_a_broken_tflite(exported_model, tmp_path):
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(exported_model["tflite"].read_bytes()[:100])
    (tmp_path / "broken.json").write_bytes(exported_model["tflite"].with_suffix(".json").read_bytes())
    with pytest.raises(TfunetError, match="cannot load TFLite model"):
        load_predictor(broken)


# --- files ------------------------------------------------------------------------------------

def _write(path, array, **kwargs):
    if path.suffix == ".tif":
        tifffile.imwrite(path, array)
    else:
        Image.fromarray(array, **kwargs).save(path)


RGB = np.arange(12 * 10 * 3, dtype=np.uint8).reshape(12, 10, 3)


@pytest.mark.parametrize("name, array, expected", [
    ("rgb.tif", RGB, RGB),
    ("rgb.png", RGB, RGB),
    ("rgba.png", np.concatenate([RGB, np.full((12, 10, 1), 7, np.uint8)], axis=-1), RGB),
])
def test_read_image(tmp_path, name, array, expected):
    _write(tmp_path / name, array)
    np.testing.assert_array_equal(read_image(tmp_path / name), expected)


def test_read_image_converts_palette_png(tmp_path):
    Image.fromarray(RGB).convert("P").save(tmp_path / "palette.png")
    image = read_image(tmp_path / "palette.png")
    assert image.shape == (12, 10, 3) and image.dtype == np.uint8


@pytest.mark.parametrize("name, content, message", [
    ("gray.png", np.zeros((12, 10), np.uint8), "needs 3 channels"),
    ("deep.tif", np.zeros((12, 10, 3), np.uint16), "needs 8-bit"),
    ("text.jpg", b"not an image", "cannot read"),
    ("truncated.tif", None, "cannot read"),
])
def test_read_image_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:
        tifffile.imwrite(path, RGB)
        path.write_bytes(path.read_bytes()[:60])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        _write(path, content)
    with pytest.raises(TfunetError, match=message):
        read_image(path)


def test_overlay_tints_only_the_mask():
    image = np.full((2, 2, 3), 100, np.uint8)
    mask = np.array([[1, 0], [0, 0]], np.uint8)
    out = overlay(image, mask)
    np.testing.assert_array_equal(out[0, 1:], image[0, 1:])
    np.testing.assert_array_equal(out[1], image[1])
    expected = np.round((1 - OVERLAY_ALPHA) * 100 + OVERLAY_ALPHA * np.array([255, 0, 0]))
    np.testing.assert_array_equal(out[0, 0], expected)


def test_predict_cli_end_to_end(exported_model, tumour_images, tmp_path, capsys):
    """A folder (searched recursively) with good images, an unreadable file, a grayscale image
    and a ground-truth mask to skip, plus a missing input: the good ones get a mask and an overlay,
    every bad one a line on stderr, and the exit status is 1."""
    inputs = tmp_path / "in"
    (inputs / "patient").mkdir(parents=True)
    tifffile.imwrite(inputs / "patient" / "p_1.tif", tumour_images[0])
    tifffile.imwrite(inputs / "patient" / "p_1_mask.tif", np.zeros((64, 64), np.uint8))
    Image.fromarray(tumour_images[1][:50, :60]).save(inputs / "crop.png")
    Image.fromarray(tumour_images[2]).save(inputs / "slice.jpg", quality=95)
    (inputs / "broken.png").write_bytes(b"\x89PNG not really")
    Image.fromarray(tumour_images[3][..., 1]).save(inputs / "gray.png")
    out = tmp_path / "out"

    status = predict_main([str(inputs), str(tmp_path / "nowhere.tif"), "--model",
                           str(exported_model["saved_model"]), "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 1
    assert "input not found" in err and "nowhere.tif" in err
    assert "cannot read" in err and "broken.png" in err
    assert "gray.png" in err and "needs 3 channels" in err
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == ["crop_mask.png", "crop_overlay.png", "patient/p_1_mask.png", "patient/p_1_overlay.png",
                       "slice_mask.png", "slice_overlay.png"]
    mask = np.asarray(Image.open(out / "patient" / "p_1_mask.png"))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255} and mask.any()
    assert np.asarray(Image.open(out / "crop_overlay.png")).shape == (50, 60, 3)


@pytest.mark.parametrize("kind", FORMATS)
def test_predict_cli_exit_zero_and_same_mask_for_every_format(exported_model, tumour_images, tmp_path, kind):
    image = tmp_path / "slice.tif"
    tifffile.imwrite(image, tumour_images[0])
    out = tmp_path / kind
    assert predict_main([str(image), "--model", str(exported_model[kind]), "--out", str(out)]) == 0
    mask = np.asarray(Image.open(out / "slice_mask.png"))
    expected = load_predictor(exported_model["keras"]).predict(tumour_images[:1])["mask"][0, ..., 0] * 255
    assert mask.any() and (mask == expected).mean() >= 0.999


@pytest.mark.parametrize("argv, message", [
    (["x.png", "--out", "o"], "the following arguments are required: --model"),
    (["x.png", "--model", "missing.keras", "--out", "o"], "model not found"),
])
def test_predict_cli_errors(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert predict_main(argv) == 2
    assert message in capsys.readouterr().err


def test_predict_cli_refuses_a_file_as_out(exported_model, tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("")
    assert predict_main(["x.png", "--model", str(exported_model["tflite"]), "--out", str(out)]) == 2
    assert "--out must be a folder" in capsys.readouterr().err


def test_a_predictor_averages_its_members():
    """A list of models (an ensemble) fits behind the same calls: their probabilities average."""
    from tfunet.predictor import Predictor

    meta = {"image_size": 8, "threshold": 0.5, "postprocess": {}}
    high, low = (lambda x, v=v: np.full((len(x), 8, 8, 1), v, np.float32) for v in (0.9, 0.2))
    predictor = Predictor("ensemble", meta, "keras", [high, low])
    images = np.zeros((2, 8, 8, 3), np.uint8)
    np.testing.assert_allclose(predictor.raw(images), 0.55)
    out = predictor.predict(np.zeros((1, 16, 16, 3), np.uint8))
    np.testing.assert_allclose(out["probabilities"], 0.55, rtol=1e-6)
    assert out["mask"].shape == (1, 16, 16, 1) and out["mask"].all()
