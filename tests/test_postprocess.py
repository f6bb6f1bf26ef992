"""Post-processing steps on small hand-built volumes, flip TTA, and tuning on validation."""

from __future__ import annotations

import numpy as np
import pytest

from tfunet.errors import TfunetError
from tfunet.postprocess import (Settings, ValidationPatient, flip_average, flip_average_tf,
                                keep_largest_3d_component, remove_small_components,
                                remove_small_components_tf, slice_masks, slice_masks_tf, to_mask, tune)


DEFAULT_POSTPROCESS = Settings().to_metadata()["postprocess"]  # the defaults, defined once in Settings


def volume(slices: int = 2, size: int = 8, pixels=()) -> np.ndarray:
    """A bool (S, size, size) volume with the given (slice, row, col) pixels set."""
    v = np.zeros((slices, size, size), bool)
    for s, r, c in pixels:
        v[s, r, c] = True
    return v


# --- Settings ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"threshold": 0.0}, "threshold must be in (0, 1), got 0.0"),
    ({"threshold": 1.0}, "threshold must be in (0, 1), got 1.0"),
    ({"min_component_pixels": -1}, "min-component-pixels must be >= 0, got -1"),
])
def test_settings_reject_bad_values(kwargs, message):
    with pytest.raises(TfunetError) as err:
        Settings(**kwargs)
    assert str(err.value) == message


def test_settings_round_trip_through_metadata():
    settings = Settings(threshold=0.35, min_component_pixels=25, largest_3d_component=True, tta_flip=True)
    assert Settings.from_metadata(settings.to_metadata()) == settings
    # The metadata defaults mean "plain model output".
    assert Settings.from_metadata({"threshold": 0.5, "postprocess": DEFAULT_POSTPROCESS}) == Settings()
    assert settings.describe() == "threshold 0.35, components >= 25 px, largest 3-D component, flip TTA"


# --- small components -------------------------------------------------------------------------

BLOB3 = [(0, 1, 1), (0, 1, 2), (0, 2, 1)]  # 3 pixels
BLOB6 = [(0, 5, 4), (0, 5, 5), (0, 5, 6), (0, 6, 4), (0, 6, 5), (0, 6, 6)]  # 6 pixels
DIAGONAL = [(1, 0, 0), (1, 1, 1), (1, 2, 2), (1, 3, 3)]  # 4 pixels touching only at corners
COLUMN = [(0, 7, 0), (1, 7, 0)]  # the same pixel on both slices: 1 pixel per slice


@pytest.mark.parametrize("min_pixels, kept", [
    (0, BLOB3 + BLOB6 + DIAGONAL + COLUMN),  # off
    (1, BLOB3 + BLOB6 + DIAGONAL + COLUMN),  # every component has >= 1 pixel
    (2, BLOB3 + BLOB6),  # diagonal pixels are separate 1-pixel components; the column is per slice
    (3, BLOB3 + BLOB6),  # exactly min_pixels stays
    (4, BLOB6),
    (7, []),
])
def test_remove_small_components_counts_4_connected_per_slice(min_pixels, kept):
    mask = volume(pixels=BLOB3 + BLOB6 + DIAGONAL + COLUMN)
    np.testing.assert_array_equal(remove_small_components(mask, min_pixels), volume(pixels=kept))


def test_remove_small_components_keeps_a_channel_axis():
    mask = volume(pixels=BLOB3 + [(1, 6, 6)])[..., None]
    out = remove_small_components(mask, 2)
    assert out.shape == mask.shape
    np.testing.assert_array_equal(out[..., 0], volume(pixels=BLOB3))


# --- largest 3-D component --------------------------------------------------------------------

# A lesion of 3 pixels on each of 3 slices (9, joined across slices only diagonally on slice 2)
# and a 6-pixel blob alone on slice 0: the lesion is larger in 3-D though smaller on each slice.
LESION = [(s, r, c) for s in (0, 1) for r, c in ((1, 1), (1, 2), (2, 1))] + [(2, 2, 3), (2, 2, 4), (2, 3, 4)]


def test_keep_largest_3d_component_joins_slices_26_connected():
    mask = volume(slices=3, pixels=LESION + BLOB6)
    np.testing.assert_array_equal(keep_largest_3d_component(mask), volume(slices=3, pixels=LESION))


@pytest.mark.parametrize("pixels", [[], BLOB6, LESION])
def test_keep_largest_3d_component_leaves_empty_and_single_components(pixels):
    mask = volume(slices=3, pixels=pixels)[..., None]
    out = keep_largest_3d_component(mask)
    assert out.shape == mask.shape
    np.testing.assert_array_equal(out, mask)


# --- probabilities to mask ----------------------------------------------------------------------

def test_to_mask_thresholds_inclusively_then_cleans_up_in_order():
    probs = np.zeros((3, 8, 8), np.float32)
    for s, r, c in LESION:
        probs[s, r, c] = 0.6
    for s, r, c in BLOB6:
        probs[s, r, c] = 0.9
    probs[1, 7, 7] = 0.5  # a lone pixel exactly at the threshold
    assert to_mask(probs, Settings(0.5))[1, 7, 7]
    assert not to_mask(probs, Settings(0.55))[1, 7, 7]
    # Small components go first: the 3-pixel slices of the lesion, then the 6-pixel blob remains.
    np.testing.assert_array_equal(to_mask(probs, Settings(0.5, 4, True)), volume(slices=3, pixels=BLOB6))
    # Without it, the 3-D lesion (9 pixels) beats the blob (6) and the lone pixel.
    np.testing.assert_array_equal(to_mask(probs, Settings(0.5, 0, True)), volume(slices=3, pixels=LESION))


# --- flip TTA ---------------------------------------------------------------------------------

def asymmetric_model(images: np.ndarray) -> np.ndarray:
    """Not flip-equivariant: the red channel times a left-to-right ramp."""
    ramp = np.linspace(0.0, 1.0, images.shape[2], dtype=np.float32)
    return (images[..., :1].astype(np.float32) / 255.0) * ramp[None, None, :, None]


def test_flip_tta_averages_with_the_flipped_back_prediction_in_one_call():
    images = np.random.default_rng(0).integers(0, 256, (2, 4, 6, 3), dtype=np.uint8)
    calls = []

    def predict(x):
        calls.append(len(x))
        return asymmetric_model(x)

    plain, averaged = flip_average(predict, images)
    expected = (asymmetric_model(images) + asymmetric_model(images[:, :, ::-1])[:, :, ::-1]) / 2
    np.testing.assert_allclose(plain, asymmetric_model(images), rtol=1e-6)
    np.testing.assert_allclose(averaged, expected, rtol=1e-6)
    assert calls == [4]  # image and mirror image as one batch
    # Flip TTA makes any model flip-equivariant.
    mirrored = flip_average(asymmetric_model, images[:, :, ::-1])[1]
    np.testing.assert_allclose(mirrored, expected[:, :, ::-1], rtol=1e-6)


# --- the two backends: NumPy/SciPy and TensorFlow graph ops ---------------------------------------

def _blobs():
    mask = np.zeros((2, 12, 12), bool)
    mask[0, 1:3, 1:3] = True  # 4 pixels
    mask[0, 5:8, 5:9] = True  # 12 pixels
    mask[0, 8, 8] = mask[0, 9, 9] = True  # a pixel attached, one only touching diagonally
    mask[1, ::2, :] = True  # rows joined at alternate ends: one 78-pixel snake
    mask[1, 1::4, -1] = mask[1, 3::4, 0] = True
    return mask


@pytest.mark.parametrize("mask, min_pixels, kept", [
    (_blobs(), 1, 4 + 13 + 1 + 78), (_blobs(), 2, 4 + 13 + 78), (_blobs(), 5, 13 + 78), (_blobs(), 13, 13 + 78),
    (_blobs(), 14, 78), (_blobs(), 78, 78), (_blobs(), 79, 0), (_blobs(), 85, 0),
    (np.zeros((1, 8, 8), bool), 3, 0),
    (np.ones((1, 8, 8), bool), 64, 64), (np.ones((1, 8, 8), bool), 65, 0),
    (np.random.default_rng(0).random((3, 40, 40)) > 0.45, 6, None),
])
def test_remove_small_components_is_the_same_in_both_backends(mask, min_pixels, kept):
    import tensorflow as tf

    numpy_mask = remove_small_components(mask, min_pixels)
    np.testing.assert_array_equal(remove_small_components_tf(tf.constant(mask), min_pixels).numpy(), numpy_mask)
    if kept is not None:
        assert numpy_mask.sum() == kept


def _probability_batch():
    """Probabilities N x H x W x 1 with blobs of several sizes around several thresholds."""
    rng = np.random.default_rng(3)
    probs = rng.random((3, 32, 32, 1)).astype(np.float32) * 0.6
    probs[0, 4:10, 4:12] = 0.8
    probs[1, 20:22, 3:5] = 0.95
    probs[2, 10:30, 10:14] = 0.7
    return probs


@pytest.mark.parametrize("settings", [
    Settings(), Settings(threshold=0.3), Settings(threshold=0.55, min_component_pixels=5),
    Settings(min_component_pixels=50), Settings(threshold=0.6, min_component_pixels=3, tta_flip=True),
])
@pytest.mark.parametrize("size", [32, 48])
def test_every_per_slice_step_is_the_same_in_both_backends(settings, size):
    """Flip TTA, threshold and small components, at the model size (32) and at another size
    (component sizes scale by area), give identical masks through NumPy and TensorFlow."""
    import tensorflow as tf

    def model(images):  # not flip-equivariant, and keeps most of the blobs above 0.5
        ramp = np.linspace(0.75, 1.0, images.shape[2], dtype=np.float32)
        return (np.asarray(images)[..., :1].astype(np.float32) / 255.0) * ramp[None, None, :, None]

    images = (_probability_batch() * 255).astype(np.uint8).repeat(3, axis=-1)
    images = tf.cast(tf.image.resize(images, (size, size), method="nearest"), tf.uint8).numpy()
    plain, averaged = flip_average(model, images)
    numpy_probs = averaged if settings.tta_flip else plain
    tf_probs = flip_average_tf(lambda x: tf.constant(model(x)), tf.constant(images), settings).numpy()
    np.testing.assert_allclose(tf_probs, numpy_probs, rtol=1e-6)
    numpy_mask = slice_masks(numpy_probs, settings, image_size=32)
    tf_mask = slice_masks_tf(tf.constant(numpy_probs), settings, image_size=32).numpy()
    assert tf_mask.dtype == np.uint8
    np.testing.assert_array_equal(tf_mask.astype(bool), numpy_mask)
    assert numpy_mask.any()


# --- tuning -------------------------------------------------------------------------------------

def pooled_dice(masks, truths) -> float:
    tp = sum(np.sum(m & t) for m, t in zip(masks, truths))
    total = sum(np.sum(m) + np.sum(t) for m, t in zip(masks, truths))
    return 2 * tp / total if total else 1.0


def validation_patient() -> ValidationPatient:
    """Truth: a 3-D lesion. Plain probabilities: the lesion at 0.45, a 2-pixel speck at 0.8 and a
    large 2-D false blob (6 px) at 0.8 on another slice. Flip TTA: the lesion at 0.7."""
    truth = volume(slices=3, pixels=LESION)
    probs = np.where(truth, 0.45, 0.05).astype(np.float32)
    for s, r, c in BLOB6 + [(1, 6, 0), (1, 7, 0)]:
        probs[s, r, c] = 0.8
    probs_tta = np.where(truth, 0.7, probs).astype(np.float32)
    return ValidationPatient(truth, probs, probs_tta)


def test_tune_turns_on_each_step_only_when_it_helps():
    settings, report = tune([validation_patient()], pooled_dice, thresholds=(0.3, 0.4, 0.5, 0.6, 0.9),
                            min_pixels=(0, 2, 3, 7))
    # TTA lifts the lesion over 0.5; the threshold then stays (0.6 and 0.5 tie, ties keep the current);
    # dropping components under 3 px removes the speck, and the largest 3-D component the blob.
    assert settings == Settings(threshold=0.5, min_component_pixels=3, largest_3d_component=True,
                                tta_flip=True)
    by_step = {r["step"]: r for r in report}
    assert [r["step"] for r in report] == ["tta_flip", "threshold", "min_component_pixels",
                                           "largest_3d_component"]
    scores = {c["value"]: c["score"] for c in by_step["tta_flip"]["scores"]}
    assert scores[False] == pytest.approx(0.0)  # the lesion at 0.45 is missed, false blobs remain
    assert scores[True] == pytest.approx(18 / (9 + 9 + 8))
    assert by_step["largest_3d_component"]["scores"][-1]["score"] == pytest.approx(1.0)


def test_tune_keeps_a_step_off_when_it_does_not_help():
    truth = volume(slices=1, pixels=BLOB6)
    patient = ValidationPatient(truth, np.where(truth, 0.9, 0.1).astype(np.float32))
    settings, report = tune([patient], pooled_dice, steps=("threshold", "min_component_pixels",
                                                           "largest_3d_component"))
    assert settings == Settings()  # already perfect: nothing is turned on
    assert all(r["chosen"] == r["before"] for r in report)


def test_tune_needs_patients_and_tta_predictions():
    with pytest.raises(TfunetError, match="at least one validation patient"):
        tune([], pooled_dice)
    truth = volume(slices=1, pixels=BLOB6)
    with pytest.raises(TfunetError, match="flipped predictions"):
        tune([ValidationPatient(truth, truth.astype(np.float32))], pooled_dice)
