import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

import tfunet
from tfunet.errors import TfunetError
from tfunet.model import UNet, build_unet


@pytest.mark.parametrize(
    "image_size, depth, base_filters, batch_norm, upsampling",
    [
        (32, 1, 4, True, "transpose"),
        (32, 2, 4, False, "bilinear"),
        (64, 3, 8, True, "bilinear"),
        (64, 4, 4, True, "transpose"),
        (48, 4, 4, False, "transpose"),
    ],
)
def test_output_shape_and_dtype(image_size, depth, base_filters, batch_norm, upsampling):
    model = build_unet(image_size=image_size, depth=depth, base_filters=base_filters,
                       batch_norm=batch_norm, upsampling=upsampling)
    out = model(np.zeros((2, image_size, image_size, 3), np.float32), training=False)
    assert tuple(out.shape) == (2, image_size, image_size, 1)
    assert out.dtype == "float32"
    assert model.input_shape == (None, image_size, image_size, 3)


def test_filters_double_per_level():
    model = build_unet(image_size=32, depth=3, base_filters=4)
    filters = [model.get_layer(f"enc{level}_conv1").filters for level in range(3)]
    assert filters == [4, 8, 16]
    assert model.get_layer("bottleneck_conv1").filters == 32


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_logits_stay_float32_under_mixed_precision(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = build_unet(image_size=32, depth=2, base_filters=4)
        out = model(np.full((1, 32, 32, 3), 255.0, np.float32))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("enc0_conv1").compute_dtype != "float32"
    assert out.dtype == "float32"


def test_model_normalises_raw_pixels_itself():
    model = build_unet(image_size=32, depth=2, base_filters=4)
    rescale = model.get_layer("rescale")
    np.testing.assert_allclose(np.asarray(rescale(np.array([[0.0, 255.0]]))), [[0.0, 1.0]], atol=1e-6)


@pytest.mark.parametrize("image_size, depth", [(100, 4), (30, 2), (65, 1)])
def test_size_not_divisible_is_rejected(image_size, depth):
    with pytest.raises(TfunetError, match="not divisible"):
        build_unet(image_size=image_size, depth=depth)


def test_unknown_upsampling_is_rejected():
    with pytest.raises(TfunetError, match="upsampling"):
        build_unet(image_size=32, depth=2, upsampling="nearest")


def test_public_api_exports_builder():
    assert tfunet.build_unet is build_unet and tfunet.UNet is UNet
    assert {"build_unet", "UNet", "load_model"} <= set(tfunet.__all__)


def test_unet_is_a_registered_keras_object_with_a_complete_config(tmp_path):
    model = UNet(image_size=32, depth=2, base_filters=4, dropout=0.1, upsampling="bilinear")
    config = model.get_config()
    assert config == {"image_size": 32, "channels": 3, "depth": 2, "base_filters": 4, "batch_norm": True,
                      "dropout": 0.1, "upsampling": "bilinear", "policy": "float32",
                      "fused_batch_norm": False, "name": "unet", "trainable": True}
    clone = UNet.from_config(config)
    assert clone.count_params() == model.count_params()
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(reloaded, UNet) and reloaded.get_config() == config
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(reloaded(x), model(x), atol=1e-6)


@pytest.mark.parametrize("fused, layer_module", [(True, "tfunet.layers"), (False, "keras")])
def test_fused_batch_norm_chooses_the_normalization_layer_and_survives_a_reload(tmp_path, fused, layer_module):
    model = UNet(image_size=32, depth=2, base_filters=4, fused_batch_norm=fused)
    assert type(model.get_layer("enc0_bn1")).__module__.startswith(layer_module)
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(reloaded.get_layer("enc0_bn1")).__module__.startswith(layer_module)


@pytest.mark.parametrize("saved_fused", [False, True])
def test_weight_files_move_between_fused_and_keras_batch_norm(tmp_path, saved_fused):
    """Checkpoints and training backups made with one layer load into the other (a `.keras` file
    from before the fused layer existed loads into today's default)."""
    x = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    saved = UNet(image_size=32, depth=2, base_filters=4, fused_batch_norm=saved_fused)
    saved(x, training=True)  # moves the batch-norm statistics away from their initial values
    saved.save_weights(tmp_path / "m.weights.h5")
    loaded = UNet(image_size=32, depth=2, base_filters=4, fused_batch_norm=not saved_fused)
    loaded.load_weights(tmp_path / "m.weights.h5")
    np.testing.assert_allclose(loaded(x, training=False), saved(x, training=False), atol=1e-4)


def test_rebuild_under_another_policy_is_from_config_plus_weights():
    from tfunet.loading import float32_model, rebuild_in_policy

    model = UNet(image_size=32, depth=2, base_filters=4, policy="mixed_bfloat16")
    assert model.get_layer("enc0_conv1").compute_dtype == "bfloat16"
    assert model.get_layer("logits").compute_dtype == "float32"
    rebuilt = float32_model(model)
    assert isinstance(rebuilt, UNet) and rebuilt.policy == "float32"
    assert {layer.compute_dtype for layer in rebuilt.layers} == {"float32"}
    for a, b in zip(rebuilt.weights, model.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    back = rebuild_in_policy(rebuilt, "mixed_bfloat16")
    assert back.get_layer("enc0_conv1").compute_dtype == "bfloat16"
    assert back.get_layer("logits").compute_dtype == "float32"


LEGACY = Path(__file__).parent / "fixtures" / "legacy_unet_v0.keras"


def test_a_model_saved_by_tfunet_0_loads_rebuilds_and_exports(tmp_path):
    """A `.keras` file from before `UNet` existed (a plain functional model; 32 px, base 4,
    depth 2, float32) still loads, rebuilds under another policy and exports."""
    from ai_edge_litert.interpreter import Interpreter

    from tfunet.export import export
    from tfunet.loading import float32_model, load_keras_model, rebuild_in_policy
    from tfunet.predictor import load_predictor

    model, meta = load_keras_model(LEGACY)
    assert not isinstance(model, UNet) and model.name == "unet"
    bf16 = rebuild_in_policy(model, "mixed_bfloat16")
    assert bf16.get_layer("enc0_conv1").compute_dtype == "bfloat16"
    assert bf16.get_layer("logits").compute_dtype == "float32"
    assert float32_model(bf16).get_layer("enc0_conv1").compute_dtype == "float32"
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(float32_model(bf16)(x), model(x), atol=1e-5)

    copy = tmp_path / "legacy.keras"
    shutil.copy(LEGACY, copy)
    shutil.copy(LEGACY.with_suffix(".json"), copy.with_suffix(".json"))
    written = export(copy, saved_model=tmp_path / "serving", tflite=tmp_path / "legacy_float32.tflite")
    assert written["rebuilt_in_float32"] is False
    assert Interpreter(model_path=written["tflite"]).get_input_details()[0]["shape"].tolist() == [1, 32, 32, 3]
    images = x.round().astype(np.uint8)
    np.testing.assert_allclose(load_predictor(tmp_path / "serving")(images),
                               load_predictor(copy)(images), atol=1e-5)
