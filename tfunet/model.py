"""The U-Net (Ronneberger et al. 2015) as a Keras functional model.

The model takes raw pixel values (0-255, float) and rescales them itself, so every consumer
(evaluation, SavedModel serving, TFLite) feeds exactly what is on disk. It returns logits in
float32 whatever the mixed-precision policy, because the loss and metrics sum over pixels.
"""

from __future__ import annotations

import keras
from keras import layers

from tfunet.errors import TfunetError


def _conv_block(x, filters: int, batch_norm: bool, dropout: float, name: str):
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm,
                          kernel_initializer="he_normal", name=f"{name}_conv{i}")(x)
        if batch_norm:
            # PyTorch's default momentum (0.1 there = 0.9 here): Keras's 0.99 lags for
            # hundreds of steps, so short runs validate with stale statistics.
            x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    if dropout:
        x = layers.SpatialDropout2D(dropout, name=f"{name}_dropout")(x)
    return x


def build_unet(image_size: int = 256, channels: int = 3, depth: int = 4, base_filters: int = 32,
               batch_norm: bool = True, dropout: float = 0.0, upsampling: str = "transpose",
               name: str = "unet") -> keras.Model:
    """Build a U-Net: `depth` down-sampling steps, filters doubling per level.

    Input: (image_size, image_size, channels) raw intensities in [0, 255].
    Output: (image_size, image_size, 1) float32 logits of the tumour mask.
    """
    if image_size % (2 ** depth):
        raise TfunetError(f"image size {image_size} is not divisible by 2**depth = {2 ** depth}")
    if upsampling not in ("transpose", "bilinear"):
        raise TfunetError(f"unknown upsampling {upsampling!r}; choose transpose or bilinear")

    inputs = keras.Input((image_size, image_size, channels), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)

    skips = []
    for level in range(depth):
        x = _conv_block(x, base_filters * 2 ** level, batch_norm, 0.0, f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)

    x = _conv_block(x, base_filters * 2 ** depth, batch_norm, dropout, "bottleneck")

    for level in reversed(range(depth)):
        filters = base_filters * 2 ** level
        if upsampling == "transpose":
            x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"dec{level}_up")(x)
        else:
            x = layers.UpSampling2D(2, interpolation="bilinear", name=f"dec{level}_up")(x)
            x = layers.Conv2D(filters, 1, name=f"dec{level}_up_proj")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = _conv_block(x, filters, batch_norm, 0.0, f"dec{level}")

    # Start from the prior that ~2% of pixels are tumour (logit -3.9) instead of 50%: otherwise
    # the first epochs are spent pushing every background pixel down (Lin et al. 2017).
    x = layers.Conv2D(1, 1, bias_initializer=keras.initializers.Constant(-3.9), name="head")(x)
    logits = layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def build_from_config(config) -> keras.Model:
    """Build the U-Net a `TrainConfig` describes."""
    return build_unet(image_size=config.image_size, depth=config.depth,
                      base_filters=config.base_filters, batch_norm=config.batch_norm,
                      dropout=config.dropout, upsampling=config.upsampling)
