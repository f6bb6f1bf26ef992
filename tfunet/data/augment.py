"""Training-time augmentation in the tf.data graph, as in the PyTorch original (flips, small
rotations and scaling) plus brightness, contrast and gamma jitter.

Geometry is one affine warp applied to image (bilinear) and mask (nearest, so it stays binary)
with the same matrix. Randomness is stateless: each slice draws from a seed pair taken from
`tf.data.Dataset.random(seed)`, re-drawn every epoch, so a run is reproducible from its seed
whatever the parallelism.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    flip_prob: float = 0.5  # left-right flip
    max_rotation_deg: float = 15.0
    max_scale: float = 0.05  # zoom factor in [1 - max_scale, 1 + max_scale]
    brightness: float = 0.1  # additive shift, as a fraction of the intensity range
    contrast: float = 0.1  # factor in [1 - contrast, 1 + contrast] about the slice mean
    gamma: float = 0.2  # exponent in [1 / (1 + gamma), 1 + gamma], log-uniform


def _affine(seeds, params: AugmentParams, height, width):
    """The 8 projective-transform parameters mapping output pixels to input pixels."""
    flip = tf.where(tf.random.stateless_uniform([], seeds[0]) < params.flip_prob, -1.0, 1.0)
    angle = tf.random.stateless_uniform([], seeds[1], -1.0, 1.0) * math.radians(params.max_rotation_deg)
    scale = tf.random.stateless_uniform([], seeds[2], 1.0 - params.max_scale, 1.0 + params.max_scale)
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    # Input = M (output - centre) + centre, with M = rotation(-angle) / scale @ flip(x).
    m00, m01, m10, m11 = flip * cos, sin, -flip * sin, cos
    cx, cy = (tf.cast(width, tf.float32) - 1.0) / 2.0, (tf.cast(height, tf.float32) - 1.0) / 2.0
    return tf.stack([m00, m01, cx - m00 * cx - m01 * cy,
                     m10, m11, cy - m10 * cx - m11 * cy, 0.0, 0.0])[None]


def _warp(image, transform, interpolation: str):
    shape = tf.shape(image)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform, output_shape=shape[:2], fill_value=0.0,
        interpolation=interpolation, fill_mode="CONSTANT")[0]


def _intensity_table(seeds, params: AugmentParams, mean):
    """Brightness, contrast and gamma as one 256-entry lookup table for a uint8 image with
    intensity `mean` (in [0, 1]): a gather is much cheaper than `pow` on every pixel."""
    levels = tf.linspace(0.0, 1.0, 256)
    shift = tf.random.stateless_uniform([], seeds[3], -params.brightness, params.brightness)
    factor = tf.random.stateless_uniform([], seeds[4], 1.0 - params.contrast, 1.0 + params.contrast)
    levels = tf.clip_by_value((levels - mean) * factor + mean + shift, 0.0, 1.0)
    log_gamma = math.log1p(params.gamma)
    gamma = tf.exp(tf.random.stateless_uniform([], seeds[5], -log_gamma, log_gamma))
    return tf.cast(tf.round(tf.pow(levels, gamma) * 255.0), tf.uint8)


def augment_slice(element: dict, seed, params: AugmentParams = AugmentParams()) -> dict:
    """One random augmentation of a slice dict (image uint8 HxWx3, mask uint8 HxWx1) from a
    seed pair; other keys pass through."""
    seeds = tf.random.experimental.stateless_split(seed, 6)
    image = element["image"]
    mean = tf.reduce_mean(tf.cast(image, tf.float32)) / 255.0
    image = tf.gather(_intensity_table(seeds, params, mean), tf.cast(image, tf.int32))
    shape = tf.shape(image)
    transform = _affine(seeds, params, shape[0], shape[1])
    image = _warp(tf.cast(image, tf.float32), transform, "BILINEAR")
    mask = _warp(tf.cast(element["mask"], tf.float32), transform, "NEAREST")
    return {**element,
            "image": tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8),
            "mask": tf.cast(mask > 0.5, tf.uint8)}


def augment(dataset: tf.data.Dataset, seed: int, params: AugmentParams = AugmentParams()) -> tf.data.Dataset:
    """Augment every slice of an unbatched dataset; fresh draws each epoch, reproducible by seed."""
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((dataset, seeds)).map(
        lambda element, pair: augment_slice(element, pair, params),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
