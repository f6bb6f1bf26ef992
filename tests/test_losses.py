import math

import keras
import numpy as np
import pytest

from tfunet.losses import BCEDiceLoss, bce_with_logits, soft_dice_from_logits

BIG = 30.0  # a logit this large is a certain prediction


def _mask(shape=(2, 8, 8, 1), frac=0.25, seed=0):
    return (np.random.default_rng(seed).random(shape) < frac).astype(np.float32)


def _reference_bce(y, logits):
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))


@pytest.mark.parametrize(
    "y, logits, expected",
    [
        # all logits 0 -> p = 0.5 everywhere -> BCE = ln 2 regardless of the mask
        (np.array([[0.0, 1.0]]), np.array([[0.0, 0.0]]), math.log(2)),
        # certain and right -> ~0
        (np.array([[0.0, 1.0]]), np.array([[-BIG, BIG]]), 0.0),
        # certain and wrong -> ~BIG per pixel
        (np.array([[0.0, 1.0]]), np.array([[BIG, -BIG]]), BIG),
        # one right, one wrong
        (np.array([[1.0, 1.0]]), np.array([[BIG, -BIG]]), BIG / 2),
    ],
)
def test_bce_hand_computed(y, logits, expected):
    assert float(bce_with_logits(y, logits)) == pytest.approx(expected, abs=1e-5)


def test_bce_matches_reference_on_random_values():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (2, 8, 8, 1)).astype(np.float32)
    y = _mask()
    assert float(bce_with_logits(y, logits)) == pytest.approx(_reference_bce(y, logits), rel=1e-5)


@pytest.mark.parametrize(
    "y, logits, expected",
    [
        # p = 0.5 on 4 pixels, 2 of them true: (2*1 + 1) / (2 + 2 + 1) = 0.6
        (np.array([[1.0, 1.0, 0.0, 0.0]]), np.zeros((1, 4)), 3.0 / 5.0),
        # empty truth, certain empty prediction -> smooth/smooth = 1
        (np.zeros((1, 4)), np.full((1, 4), -BIG), 1.0),
        # empty truth, everything predicted -> 1 / (4 + 1)
        (np.zeros((1, 4)), np.full((1, 4), BIG), 1.0 / 5.0),
    ],
)
def test_soft_dice_hand_computed(y, logits, expected):
    assert float(soft_dice_from_logits(y, logits)) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("per_slice, expected", [
    # slice 1: p = 0.5 on 4 pixels, 2 true (Dice 3/5); slice 2: empty and predicted empty (Dice 1)
    (False, (2.0 * 1.0 + 1.0) / (2.0 + 2.0 + 1.0)),  # pooled: slice 2 adds nothing
    (True, (3.0 / 5.0 + 1.0) / 2.0),  # per slice: the mean of the two
])
def test_pooled_and_per_slice_dice(per_slice, expected):
    y = np.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    logits = np.array([[0.0, 0.0, 0.0, 0.0], [-BIG, -BIG, -BIG, -BIG]])
    assert float(soft_dice_from_logits(y, logits, per_slice=per_slice)) == pytest.approx(expected, abs=1e-5)
    loss = BCEDiceLoss(bce_weight=0.0, per_slice=per_slice)
    assert float(loss(y, logits)) == pytest.approx(1.0 - expected, abs=1e-5)


def test_perfect_prediction_is_near_zero_and_inverted_is_high():
    y = _mask()
    loss = BCEDiceLoss()
    perfect = float(loss(y, np.where(y > 0, BIG, -BIG)))
    inverted = float(loss(y, np.where(y > 0, -BIG, BIG)))
    assert perfect < 1e-3
    assert inverted > 10.0


def test_weights_combine_linearly():
    y = _mask()
    logits = np.random.default_rng(2).normal(0, 2, y.shape).astype(np.float32)
    bce = float(bce_with_logits(y, logits))
    dice = float(soft_dice_from_logits(y, logits))
    got = float(BCEDiceLoss(bce_weight=0.3, dice_weight=2.0)(y, logits))
    assert got == pytest.approx(0.3 * bce + 2.0 * (1 - dice), rel=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_all_empty_masks_stay_finite(dtype):
    y = np.zeros((16, 256, 256, 1), np.float32)
    logits = keras.ops.cast(np.full(y.shape, 8.0, np.float32), dtype)  # 1M confident false positives
    value = float(BCEDiceLoss()(y, logits))
    assert math.isfinite(value)
    assert value > 1.0


def test_float16_logits_are_summed_in_float32():
    # 16x256x256 probabilities of ~1 sum to ~1M, far above float16's 65504
    y = np.ones((16, 256, 256, 1), np.float32)
    logits = keras.ops.cast(np.full(y.shape, BIG, np.float32), "float16")
    assert float(soft_dice_from_logits(y, logits)) == pytest.approx(1.0, abs=1e-4)


def test_loss_serialises_with_its_weights():
    loss = BCEDiceLoss(bce_weight=0.5, dice_weight=1.5, per_slice=True)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, BCEDiceLoss)
    assert (restored.bce_weight, restored.dice_weight, restored.per_slice) == (0.5, 1.5, True)
