"""BCE-with-logits + soft Dice, the PyTorch original's loss.

Written with `keras.ops` only, so it runs on any Keras backend, and computed in float32: the
Dice sums run over every pixel of the batch (16x256x256 = 1M terms), which overflows float16.
"""

from __future__ import annotations

import keras
from keras import ops


def bce_with_logits(y_true, logits):
    """Mean binary cross-entropy from logits, in the numerically stable form
    max(x, 0) - x*y + log(1 + exp(-|x|))."""
    y_true = ops.cast(y_true, "float32")
    logits = ops.cast(logits, "float32")
    per_pixel = ops.relu(logits) - logits * y_true + ops.log1p(ops.exp(-ops.abs(logits)))
    return ops.mean(per_pixel)


def soft_dice_from_logits(y_true, logits, smooth: float = 1.0, per_slice: bool = False):
    """Soft Dice of sigmoid(logits) against the mask, pooled over the whole batch, or per slice
    and averaged (each slice counts the same, however small its tumour).

    `smooth` keeps an all-empty batch (or slice) finite (it scores 1, no penalty) and the
    gradient smooth.
    """
    y_true = ops.cast(y_true, "float32")
    probs = ops.sigmoid(ops.cast(logits, "float32"))
    axes = tuple(range(1, len(y_true.shape))) if per_slice else None
    intersection = ops.sum(probs * y_true, axis=axes)
    total = ops.sum(probs, axis=axes) + ops.sum(y_true, axis=axes)
    return ops.mean((2.0 * intersection + smooth) / (total + smooth))


@keras.saving.register_keras_serializable(package="tfunet")
class BCEDiceLoss(keras.losses.Loss):
    """bce_weight * BCE(logits) + dice_weight * (1 - soft Dice(sigmoid(logits))); the Dice is
    batch-pooled, as in the original, or per slice."""

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0,
                 per_slice: bool = False, name: str = "bce_dice", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(name=name, **kwargs)
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)
        self.per_slice = bool(per_slice)

    def call(self, y_true, y_pred):
        bce = bce_with_logits(y_true, y_pred)
        dice = soft_dice_from_logits(y_true, y_pred, self.smooth, self.per_slice)
        return self.bce_weight * bce + self.dice_weight * (1.0 - dice)

    def get_config(self):
        config = super().get_config()
        config.update(bce_weight=self.bce_weight, dice_weight=self.dice_weight, smooth=self.smooth, per_slice=self.per_slice)
        return config
