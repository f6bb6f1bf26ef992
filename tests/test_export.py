"""tfunet.export and tfunet-export: the serving SavedModel, TFLite variants, mixed-precision rebuild."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from tfunet.cli.export import main as export_main
from tfunet.config import make_config
from tfunet.data.pipeline import make_pipeline
from tfunet.data.sources import load_splits
from tfunet.errors import TfunetError
from tfunet.export import calibration_images, export, export_saved_model, export_tflite
from tfunet.loading import float32_model, load_keras_model
from tfunet.metadata import read_metadata
from tfunet.postprocess import Settings, remove_small_components, slice_masks, slice_masks_tf
from tfunet.predictor import load_predictor
from tfunet.serving import INPUT_HINT, ServingModule


@pytest.fixture(scope="module")
def held_out(trained_model):
    """The trained model's validation and test slices at its size: uint8 images, 0/1 truths."""
    splits = load_splits(trained_model["config"])
    ds = splits.dataset("val").concatenate(splits.dataset("test"))
    batch = next(iter(make_pipeline(ds, image_size=trained_model["config"].image_size, batch_size=256,
                                    with_metadata=True)))
    return batch["image"].numpy(), batch["mask"].numpy()


@pytest.fixture(scope="module")
def keras_probabilities(trained_model, held_out):
    """The float32 rebuild's probabilities: what every export serves, whatever the training policy."""
    model, _ = load_keras_model(trained_model["model_path"])
    return tf.sigmoid(float32_model(model)(held_out[0].astype(np.float32), training=False)).numpy()


@pytest.fixture(scope="module")
def serving(exported_model):
    return tf.saved_model.load(str(exported_model["saved_model"])).signatures["serving_default"]


# --- SavedModel -------------------------------------------------------------------------------

FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import numpy as np, tensorflow as tf
    folder, images, out = sys.argv[1:]
    serve = tf.saved_model.load(folder).signatures["serving_default"]
    result = serve(images=tf.constant(np.load(images)))
    np.save(out, result["probabilities"].numpy())
    print(json.dumps({"inputs": {k: [v.dtype.name, v.shape.as_list()]
                                 for k, v in serve.structured_input_signature[1].items()},
                      "outputs": {k: [v.dtype.name, v.shape.as_list()]
                                  for k, v in serve.structured_outputs.items()}}))
""")


def test_saved_model_in_a_fresh_process(exported_model, held_out, keras_probabilities, tmp_path):
    """Loaded by plain TensorFlow (no tfunet, no Keras model code) it matches Keras, and
    saved_model_cli lists its signature; the two processes run side by side."""
    folder = str(exported_model["saved_model"])
    cli = subprocess.Popen(["saved_model_cli", "show", "--dir", folder, "--all"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    np.save(tmp_path / "images.npy", held_out[0])
    run = subprocess.run([sys.executable, "-c", FRESH_PROCESS, folder, str(tmp_path / "images.npy"),
                          str(tmp_path / "probs.npy")], capture_output=True, text=True, check=True)
    signature = json.loads(run.stdout.strip().splitlines()[-1])
    assert signature == {"inputs": {"images": ["uint8", [None, None, None, 3]]},
                         "outputs": {"probabilities": ["float32", [None, None, None, 1]],
                                     "mask": ["uint8", [None, None, None, 1]]}}
    np.testing.assert_allclose(np.load(tmp_path / "probs.npy"), keras_probabilities, atol=1e-5, rtol=0)

    listing, _ = cli.communicate(timeout=120)
    assert cli.returncode == 0
    assert "signature_def['serving_default']" in listing
    for line in ("inputs['images'] tensor_info:", "dtype: DT_UINT8", "shape: (-1, -1, -1, 3)",
                 "outputs['probabilities'] tensor_info:", "outputs['mask'] tensor_info:"):
        assert line in listing


def test_saved_model_takes_any_size_and_keeps_metadata(exported_model, serving, held_out, trained_model):
    images = tf.image.resize(held_out[0][:3], (50, 70)).numpy().round().astype(np.uint8)
    out = serving(images=tf.constant(images))
    assert out["probabilities"].dtype == tf.float32 and out["probabilities"].shape == (3, 50, 70, 1)
    assert out["mask"].dtype == tf.uint8 and out["mask"].shape == (3, 50, 70, 1)
    assert set(np.unique(out["mask"].numpy())) <= {0, 1}
    folder = exported_model["saved_model"]
    meta = read_metadata(folder)
    assert json.loads((folder / "assets" / "tfunet.json").read_text()) == meta
    assert meta["export"] == {"source": str(trained_model["model_path"]),
                              "rebuilt_in_float32": trained_model["policy"] != "float32", "policy": "float32"}
    assert meta["image_size"] == trained_model["config"].image_size


@pytest.mark.parametrize("images, message", [
    (np.zeros((1, 64, 64, 3), np.float32), "expected to be a uint8 tensor"),
    (np.zeros((64, 64, 3), np.uint8), "must be 4-dimensional"),
    (np.zeros((1, 64, 64, 1), np.uint8), INPUT_HINT),
])
def test_saved_model_rejects_wrong_dtype_or_shape(serving, images, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        serving(images=tf.constant(images))


# --- post-processing inside the graph ---------------------------------------------------------

@pytest.mark.parametrize("size, min_pixels, kept", [
    (16, 4, True),    # a 2x2 square at the model size: 4 >= 4
    (16, 5, False),
    (32, 4, True),    # the same square at double size is 4x4 = 16 >= 4 * 4
    (32, 5, False),   # 16 < round(5 * 4)
])
def test_min_component_pixels_scale_with_the_input_size(size, min_pixels, kept):
    probs = np.zeros((1, size, size, 1), np.float32)
    side = 2 * size // 16
    probs[0, :side, :side] = 0.9
    settings = Settings(0.5, min_pixels)
    assert slice_masks_tf(tf.constant(probs), settings, image_size=16).numpy().any() == kept
    assert slice_masks(probs, settings, image_size=16).any() == kept


def test_serving_applies_threshold_components_and_flip(trained_model, held_out):
    model, meta = load_keras_model(trained_model["model_path"])
    meta = {**meta, "threshold": 0.3,
            "postprocess": {**meta["postprocess"], "tta_flip": True, "min_component_pixels": 5}}
    images = held_out[0][:6]
    out = ServingModule(model, meta).serve(tf.constant(images))
    model = float32_model(model)  # what the module serves, whatever the training policy
    x = images.astype(np.float32)
    plain = tf.sigmoid(model(x)).numpy()
    mirrored = tf.sigmoid(model(x[:, :, ::-1])).numpy()[:, :, ::-1]
    expected = (plain + mirrored) / 2
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
    want = remove_small_components(expected[..., 0] >= 0.3, 5)
    np.testing.assert_array_equal(out["mask"].numpy()[..., 0], want.astype(np.uint8))


# --- TFLite -----------------------------------------------------------------------------------

# The float32 model's probabilities differ from a quantized variant's by at most `atol` (float16
# weights carry ~3 significant digits; int8 weights and activations ~2), so masks can only
# disagree on pixels whose probability lies that close to the threshold: a thin rim on tumour
# edges. Measured on this model: max differences 0.0012 / 0.024 / 0.070 and Dice between the
# variant's masks and float32's 1.0 / 0.986 / 0.956; the bounds leave about 2x margin.
QUANTIZED = [("float16", 0.01, 0.99), ("dynamic", 0.05, 0.95), ("int8", 0.15, 0.90)]


@pytest.fixture(scope="module")
def tflite_models(trained_model, exported_model, tmp_path_factory):
    """Every TFLite variant of the trained model; int8 through the CLI (calibration included)."""
    out = tmp_path_factory.mktemp("tflite")
    model, meta = load_keras_model(trained_model["model_path"])
    paths = {"none": exported_model["tflite"]}
    for quantize in ("float16", "dynamic"):
        paths[quantize] = export_tflite(model, meta, out / f"model_{quantize}.tflite", quantize)
    paths["int8"] = out / "model_int8.tflite"
    assert export_main(["--model", str(trained_model["model_path"]), "--tflite", str(paths["int8"]),
                        "--quantize", "int8", "--calibration-samples", "32"]) == 0
    return paths


@pytest.mark.parametrize("quantize", ["none", "float16", "dynamic", "int8"])
def test_tflite_uses_builtin_ops_only(tflite_models, trained_model, quantize):
    interpreter = Interpreter(model_path=str(tflite_models[quantize]),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "CONV_2D" in ops
    assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"]
    size = trained_model["config"].image_size
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert list(inp["shape"]) == [1, size, size, 3] and inp["dtype"] == np.float32
    assert list(out["shape"]) == [1, size, size, 1] and out["dtype"] == np.float32
    assert read_metadata(tflite_models[quantize])["export"]["tflite_quantize"] == quantize


def test_tflite_float32_matches_keras(tflite_models, held_out, keras_probabilities):
    probs = load_predictor(tflite_models["none"])(held_out[0])
    np.testing.assert_allclose(probs, keras_probabilities, atol=1e-4, rtol=0)


@pytest.mark.parametrize("quantize, atol, min_dice", QUANTIZED)
def test_quantized_masks_agree_with_float32(tflite_models, held_out, quantize, atol, min_dice,
                                           assert_masks_agree):
    reference = load_predictor(tflite_models["none"]).predict(held_out[0])
    variant = load_predictor(tflite_models[quantize]).predict(held_out[0])
    assert np.abs(variant["probabilities"] - reference["probabilities"]).max() <= atol
    assert_masks_agree(variant["mask"], reference["mask"], min_dice)
    assert (variant["mask"] == reference["mask"]).mean() >= 0.999


def test_int8_metadata_records_calibration(tflite_models):
    assert read_metadata(tflite_models["int8"])["export"]["calibration_images"] == 32


def test_calibration_images_come_from_the_training_split(trained_model):
    _, meta = load_keras_model(trained_model["model_path"])
    images = calibration_images(meta, 5)
    assert images.shape == (5, 64, 64, 3) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 255 and images.max() > 0


# --- mixed precision --------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["mixed_bfloat16", "mixed_float16"])
def mixed_trained(request, tmp_path_factory):
    """A model trained (briefly) under a mixed-precision policy through `train`."""
    from tfunet.train import train

    out = tmp_path_factory.mktemp(request.param)
    config = make_config(dict(image_size=32, base_filters=4, depth=2, num_patients=4, slices_per_patient=4,
                              epochs=1, batch_size=8, mixed_precision=request.param.removeprefix("mixed_"),
                              output_dir=str(out)))
    train(config, verbose=0)
    return request.param, config.model_dir / "best_model.keras"


def test_mixed_precision_model_exports_everything_in_float32(mixed_trained, probability_atol, tmp_path):
    """The Python API rebuilds in float32 itself: the SavedModel and all four TFLite variants
    of a bfloat16 or float16 model, from the raw model, not only through `export`."""
    policy, path = mixed_trained
    model, meta = load_keras_model(path)
    assert meta["policy"] == policy and model.get_layer("enc0_conv1").dtype_policy.name == policy
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), np.uint8)
    reference = tf.sigmoid(float32_model(model)(images.astype(np.float32))).numpy()
    assert float32_model(model).get_layer("enc0_conv1").compute_dtype == "float32"
    np.testing.assert_allclose(tf.sigmoid(model(images.astype(np.float32))).numpy(), reference,
                               atol=probability_atol(policy))

    folder = export_saved_model(model, meta, tmp_path / "serving")
    assert read_metadata(folder)["export"]["policy"] == "float32"
    served = tf.saved_model.load(str(folder)).signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(served["probabilities"].numpy(), reference, atol=1e-5)
    calibration = images.astype(np.float32)
    for quantize in ("none", "float16", "dynamic", "int8"):
        tflite = export_tflite(model, meta, tmp_path / f"m_{quantize}.tflite", quantize,
                               calibration if quantize == "int8" else None)
        assert read_metadata(tflite)["export"]["policy"] == "float32"
        interpreter = Interpreter(model_path=str(tflite))
        dtypes = {np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details() if t["name"]}
        assert "bfloat16" not in dtypes
        if quantize == "none":
            assert dtypes == {"float32", "int32"}
            np.testing.assert_allclose(load_predictor(tflite)(images), reference, atol=1e-4)
    written = export(path, tflite=tmp_path / "cli_float32.tflite")
    assert written["rebuilt_in_float32"] is True and written["policy"] == "float32"
    assert read_metadata(tmp_path / "cli_float32.tflite")["export"]["rebuilt_in_float32"] is True


# --- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({}, "nothing to export"),
    ({"tflite": "{dir}/best_model.tflite"}, "would share its metadata file"),
    ({"tflite": "{dir}/m.tflite", "quantize": "int4"}, "--quantize must be one of"),
    ({"tflite": "{dir}/m.tflite", "calibration_samples": 0}, "--calibration-samples must be at least 1"),
    ({"tflite": "{dir}/m.lite"}, "--tflite must end in .tflite"),
    ({"saved_model": "{dir}/best_model.keras"}, "--saved-model must be a folder"),
    ({"tflite": "{dir}/m.tflite", "quantize": "int8", "data_dir": "{dir}/missing"}, "data folder not found"),
])
def test_export_errors(trained_model, kwargs, message):
    folder = trained_model["model_path"].parent
    kwargs = {k: v.format(dir=folder) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(TfunetError, match=message):
        export(trained_model["model_path"], **kwargs)


@pytest.mark.parametrize("name, message", [
    ("missing.keras", "model not found"),
    ("model.h5", "--model must be a .keras file"),
])
def test_export_rejects_bad_model_paths(tmp_path, name, message):
    with pytest.raises(TfunetError, match=message):
        export(tmp_path / name, saved_model=tmp_path / "out")


def test_failed_export_keeps_the_old_file(trained_model, tmp_path, capsys):
    old = tmp_path / "model_int8.tflite"
    old.write_bytes(b"previous good model")
    status = export_main(["--model", str(trained_model["model_path"]), "--tflite", str(old),
                          "--quantize", "int8", "--data-dir", str(tmp_path / "missing")])
    assert status == 2
    assert "tfunet-export: error: data folder not found" in capsys.readouterr().err
    assert old.read_bytes() == b"previous good model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_int8.tflite"]
