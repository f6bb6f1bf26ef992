import keras
import numpy as np
import pytest

import tfunet
from tfunet.errors import TfunetError
from tfunet.model import build_unet


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
    assert tfunet.build_unet is build_unet
    assert "build_unet" in tfunet.__all__
