"""The U-Net (Ronneberger et al. 2015) as a registered Keras model.

`UNet` is a functional model with a constructor, as keras-hub's backbones are: its config is
its constructor's arguments, so a `.keras` file reloads through `UNet.from_config`, and a
rebuild under another dtype policy is `from_config` with another `policy` plus the weights
(see tfunet.loading).

The model takes raw pixel values (0-255, float) and rescales them itself, so every consumer
(evaluation, SavedModel serving, TFLite) feeds exactly what is on disk. It returns logits in
float32 whatever the mixed-precision policy, because the loss and metrics sum over pixels.
"""

from __future__ import annotations

import keras
from keras import layers

from tfunet.config import check_unet_args
from tfunet.layers import BatchNormalization as FusedBatchNormalization


def _conv_block(x, filters: int, batch_norm: bool, dropout: float, name: str, dtype, fused: bool = True):
    norm = FusedBatchNormalization if fused else layers.BatchNormalization
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm,
                          kernel_initializer="he_normal", name=f"{name}_conv{i}", dtype=dtype)(x)
        if batch_norm:
            # PyTorch's default momentum (0.1 there = 0.9 here): Keras's 0.99 lags for
            # hundreds of steps, so short runs validate with stale statistics.
            x = norm(momentum=0.9, name=f"{name}_bn{i}", dtype=dtype)(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}", dtype=dtype)(x)
    if dropout:
        x = layers.SpatialDropout2D(dropout, name=f"{name}_dropout", dtype=dtype)(x)
    return x


@keras.saving.register_keras_serializable(package="tfunet")
class UNet(keras.Model):
    """A U-Net: `depth` down-sampling steps, filters doubling per level.

    Input: (image_size, image_size, channels) raw intensities in [0, 255].
    Output: (image_size, image_size, 1) float32 logits of the tumour mask.
    policy: the Keras dtype policy of every layer but the float32 logits (None: the global
    policy at construction, recorded so that a reload computes as the original did).
    fused_batch_norm: batch norm as one TensorFlow op (tfunet.layers), same weights and math as
    Keras's layer, faster on CPUs; opt-in (False: Keras's own; docs/performance.md says why).
    """

    def __init__(self, image_size: int = 256, channels: int = 3, depth: int = 4, base_filters: int = 32,
                 batch_norm: bool = True, dropout: float = 0.0, upsampling: str = "transpose",
                 policy: str | None = None, fused_batch_norm: bool = False, name: str = "unet", **kwargs):
        check_unet_args(image_size, depth, base_filters, upsampling, dropout)
        policy = policy or keras.mixed_precision.global_policy().name
        inputs = keras.Input((image_size, image_size, channels), name="image")
        x = layers.Rescaling(1.0 / 255.0, name="rescale", dtype=policy)(inputs)

        skips = []
        for level in range(depth):
            x = _conv_block(x, base_filters * 2 ** level, batch_norm, 0.0, f"enc{level}", policy, fused_batch_norm)
            skips.append(x)
            x = layers.MaxPooling2D(2, name=f"enc{level}_pool", dtype=policy)(x)

        x = _conv_block(x, base_filters * 2 ** depth, batch_norm, dropout, "bottleneck", policy, fused_batch_norm)

        for level in reversed(range(depth)):
            filters = base_filters * 2 ** level
            if upsampling == "transpose":
                x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"dec{level}_up", dtype=policy)(x)
            else:
                x = layers.UpSampling2D(2, interpolation="bilinear", name=f"dec{level}_up", dtype=policy)(x)
                x = layers.Conv2D(filters, 1, name=f"dec{level}_up_proj", dtype=policy)(x)
            x = layers.Concatenate(name=f"dec{level}_concat", dtype=policy)([x, skips[level]])
            x = _conv_block(x, filters, batch_norm, 0.0, f"dec{level}", policy, fused_batch_norm)

        # Start from the prior that ~2% of pixels are tumour (logit -3.9) instead of 50%: otherwise
        # the first epochs are spent pushing every background pixel down (Lin et al. 2017).
        x = layers.Conv2D(1, 1, bias_initializer=keras.initializers.Constant(-3.9), name="head",
                          dtype=policy)(x)
        logits = layers.Activation("linear", dtype="float32", name="logits")(x)
        super().__init__(inputs, logits, name=name, **kwargs)
        self.image_size, self.channels, self.depth = image_size, channels, depth
        self.base_filters, self.batch_norm, self.dropout = base_filters, batch_norm, dropout
        self.upsampling, self.policy, self.fused_batch_norm = upsampling, policy, fused_batch_norm

    def get_config(self) -> dict:
        return {"image_size": self.image_size, "channels": self.channels, "depth": self.depth,
                "base_filters": self.base_filters, "batch_norm": self.batch_norm, "dropout": self.dropout,
                "upsampling": self.upsampling, "policy": self.policy,
                "fused_batch_norm": self.fused_batch_norm, "name": self.name,
                "trainable": self.trainable}

    @classmethod
    def from_config(cls, config: dict) -> "UNet":
        return cls(**config)


def build_unet(image_size: int = 256, channels: int = 3, depth: int = 4, base_filters: int = 32,
               batch_norm: bool = True, dropout: float = 0.0, upsampling: str = "transpose",
               fused_batch_norm: bool = False, name: str = "unet") -> UNet:
    """A `UNet` under the global dtype policy."""
    return UNet(image_size=image_size, channels=channels, depth=depth, base_filters=base_filters,
                batch_norm=batch_norm, dropout=dropout, upsampling=upsampling,
                fused_batch_norm=fused_batch_norm, name=name)


def unet_args(config) -> dict:
    """The `UNet` arguments a `TrainConfig` describes."""
    return dict(image_size=config.image_size, depth=config.depth, base_filters=config.base_filters,
                batch_norm=config.batch_norm, dropout=config.dropout, upsampling=config.upsampling,
                fused_batch_norm=config.fused_batch_norm)


def build_from_config(config) -> UNet:
    """Build the U-Net a `TrainConfig` describes."""
    return build_unet(**unet_args(config))
