"""Augmentation: seeded, same geometry for image and mask, mask binary, image uint8."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfunet.config import AUGMENTATIONS
from tfunet.data.augment import PRESETS, AugmentParams, augment

NONE = AugmentParams(flip_prob=0.0, max_rotation_deg=0.0, max_scale=0.0, brightness=0.0,
                     contrast=0.0, gamma=0.0)
GEOMETRY = AugmentParams(brightness=0.0, contrast=0.0, gamma=0.0)


def slices(n: int = 6, size: int = 64) -> tf.data.Dataset:
    """Random images with a blob mask; image channel 0 is the mask drawn in white."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    masks = np.stack([((yy - size / 2 - 6 * i) ** 2 + (xx - size / 3) ** 2 < (size / 5) ** 2)
                      for i in range(n)]).astype(np.uint8)[..., None]
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    images[..., 0] = masks[..., 0] * 255
    return tf.data.Dataset.from_tensor_slices({"image": images, "mask": masks,
                                               "patient_id": np.array(["p"] * n)})


def run(dataset) -> list[dict]:
    return list(dataset.as_numpy_iterator())


@pytest.mark.parametrize("params, expected", [
    (NONE, lambda image: image),
    (AugmentParams(**{**vars(NONE), "flip_prob": 1.0}), lambda image: image[:, ::-1]),
    # wide rotations and scaling that never happen
    (AugmentParams(**{**vars(NONE), "max_rotation_deg": 180.0, "rotation_prob": 0.0, "max_scale": 0.3,
                      "scale_prob": 0.0}), lambda image: image),
])
def test_exact_transforms(params, expected):
    for before, after in zip(run(slices()), run(augment(slices(), seed=1, params=params))):
        np.testing.assert_array_equal(after["image"], expected(before["image"]))
        np.testing.assert_array_equal(after["mask"], expected(before["mask"]))
        assert after["patient_id"] == before["patient_id"]


def test_presets_are_the_configs_choices():
    assert tuple(PRESETS) == AUGMENTATIONS


@pytest.mark.parametrize("params", [AugmentParams(), GEOMETRY, "nnunet"])
def test_types_binary_mask_and_same_geometry(params):
    for element in run(augment(slices(), seed=3, params=params)):
        assert element["image"].dtype == np.uint8 and element["image"].shape == (64, 64, 3)
        assert element["mask"].dtype == np.uint8 and element["mask"].shape == (64, 64, 1)
        assert set(np.unique(element["mask"])) <= {0, 1}
        if params is GEOMETRY:
            # The white channel-0 blob moved with the mask (bilinear vs nearest: edges may differ).
            drawn = element["image"][..., 0] > 127
            assert np.mean(drawn != element["mask"][..., 0].astype(bool)) < 0.02


def test_seeded_reproducible_and_fresh_each_epoch():
    first = augment(slices(), seed=5)
    epoch1, epoch2 = run(first), run(first)
    again = run(augment(slices(), seed=5))
    other = run(augment(slices(), seed=6))
    same = [np.array_equal(a["image"], b["image"]) for a, b in zip(epoch1, again)]
    assert all(same)
    assert not all(np.array_equal(a["image"], b["image"]) for a, b in zip(epoch1, epoch2))
    assert not all(np.array_equal(a["image"], b["image"]) for a, b in zip(epoch1, other))
    assert not all(np.array_equal(a["image"], b["image"]) for a, b in zip(epoch1, run(slices())))


def test_augments_real_slices(lgg_source):
    ids = sorted(lgg_source.patients())[:1]
    for element in run(augment(lgg_source.dataset(ids).take(4), seed=0)):
        assert element["image"].dtype == np.uint8 and element["image"].shape == (256, 256, 3)
        assert set(np.unique(element["mask"])) <= {0, 1}


@pytest.mark.parametrize("change", [
    {"noise_prob": 1.0},
    {"blur_prob": 1.0},
    {"lowres_prob": 1.0, "lowres_zoom": (0.5, 0.5)},
])
def test_degradations_change_the_image_and_never_the_mask(change):
    params = AugmentParams(**{**vars(NONE), **change})
    before, after = run(slices()), run(augment(slices(), seed=2, params=params))
    for a, b in zip(before, after):
        np.testing.assert_array_equal(b["mask"], a["mask"])
    assert not all(np.array_equal(a["image"], b["image"]) for a, b in zip(before, after))
    if "noise_prob" not in change:  # blur and low resolution smooth the random pixels
        assert np.std(np.diff(after[0]["image"][..., 1].astype(float), axis=1)) < \
            np.std(np.diff(before[0]["image"][..., 1].astype(float), axis=1))
