"""Training-time augmentation in the tf.data graph, as in the PyTorch original (flips, small
rotations and scaling) plus brightness, contrast and gamma jitter; the `nnunet` preset adds
nnU-Net's stronger set (wide rotations and scaling, Gaussian noise, Gaussian blur, simulated low
resolution, wider gamma). nnU-Net's elastic deformation is left out: nnU-Net v2's default
trainer sets its probability to 0 as well.

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
    rotation_prob: float = 1.0  # chance of a rotation (else none), and of a scaling
    scale_prob: float = 1.0
    noise_prob: float = 0.0  # additive Gaussian noise, sd uniform in [0, noise_sd] intensity levels
    noise_sd: float = 10.0
    blur_prob: float = 0.0  # Gaussian blur, sigma uniform in blur_sigma (pixels)
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    lowres_prob: float = 0.0  # down-sample by a factor in lowres_zoom, then back up (bilinear)
    lowres_zoom: tuple[float, float] = (0.5, 1.0)


# "basic": the original's flips, rotations and scaling with mild intensity jitter (the default).
# "nnunet": nnU-Net's 2-D set and probabilities (Isensee et al. 2021), on 0-255 intensities.
PRESETS = {
    "basic": AugmentParams(),
    "nnunet": AugmentParams(max_rotation_deg=180.0, max_scale=0.3, rotation_prob=0.2, scale_prob=0.2,
                            brightness=0.1, contrast=0.25, gamma=0.5, noise_prob=0.1, blur_prob=0.2,
                            lowres_prob=0.25),
}


def _happens(seed, prob: float):
    return tf.random.stateless_uniform([], seed) < prob


def _affine(seeds, params: AugmentParams, height, width, more_seeds):
    """The 8 projective-transform parameters mapping output pixels to input pixels."""
    flip = tf.where(tf.random.stateless_uniform([], seeds[0]) < params.flip_prob, -1.0, 1.0)
    angle = tf.random.stateless_uniform([], seeds[1], -1.0, 1.0) * math.radians(params.max_rotation_deg)
    scale = tf.random.stateless_uniform([], seeds[2], 1.0 - params.max_scale, 1.0 + params.max_scale)
    if params.rotation_prob < 1.0:
        angle = tf.where(_happens(more_seeds[7], params.rotation_prob), angle, 0.0)
    if params.scale_prob < 1.0:
        scale = tf.where(_happens(more_seeds[8], params.scale_prob), scale, 1.0)
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


def _gaussian_blur(image, sigma):
    """Separable Gaussian blur of an (H, W, C) float image, radius 3 pixels."""
    taps = tf.range(-3.0, 4.0)
    kernel = tf.exp(-0.5 * tf.square(taps / sigma))
    kernel /= tf.reduce_sum(kernel)
    channels = image.shape[-1]
    x = image[None]
    for shape in ((7, 1), (1, 7)):
        k = tf.tile(tf.reshape(kernel, (*shape, 1, 1)), (1, 1, channels, 1))
        x = tf.nn.depthwise_conv2d(x, k, strides=(1, 1, 1, 1), padding="SAME")
    return x[0]


def _degrade(image, seeds, params: AugmentParams):
    """nnU-Net's noise, blur and low-resolution simulation on an (H, W, C) float image (0-255)."""
    shape = tf.shape(image)
    if params.noise_prob:
        sd = tf.random.stateless_uniform([], seeds[0], 0.0, params.noise_sd)
        noisy = image + tf.random.stateless_normal(shape, seeds[1]) * sd
        image = tf.where(_happens(seeds[2], params.noise_prob), noisy, image)
    if params.blur_prob:
        sigma = tf.random.stateless_uniform([], seeds[3], *params.blur_sigma)
        image = tf.cond(_happens(seeds[4], params.blur_prob), lambda: _gaussian_blur(image, sigma), lambda: image)
    if params.lowres_prob:
        zoom = tf.random.stateless_uniform([], seeds[5], *params.lowres_zoom)
        small = tf.maximum(tf.cast(tf.round(tf.cast(shape[:2], tf.float32) * zoom), tf.int32), 1)
        image = tf.cond(_happens(seeds[6], params.lowres_prob),
                        lambda: tf.image.resize(tf.image.resize(image, small, "nearest"), shape[:2], "bilinear"),
                        lambda: image)
    return image


def augment_slice(element: dict, seed, params: AugmentParams = AugmentParams()) -> dict:
    """One random augmentation of a slice dict (image uint8 HxWx3, mask uint8 HxWx1) from a
    seed pair; other keys pass through."""
    seeds = tf.random.experimental.stateless_split(seed, 6)
    image = element["image"]
    mean = tf.reduce_mean(tf.cast(image, tf.float32)) / 255.0
    image = tf.gather(_intensity_table(seeds, params, mean), tf.cast(image, tf.int32))
    shape = tf.shape(image)
    # Seeds of their own for what the basic set does not use, so it draws exactly what it drew
    # before these existed.
    more_seeds = tf.random.experimental.stateless_split(seeds[0] + 1, 9)
    transform = _affine(seeds, params, shape[0], shape[1], more_seeds)
    image = _warp(tf.cast(image, tf.float32), transform, "BILINEAR")
    mask = _warp(tf.cast(element["mask"], tf.float32), transform, "NEAREST")
    if params.noise_prob or params.blur_prob or params.lowres_prob:
        image = _degrade(image, more_seeds, params)
    return {**element,
            "image": tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8),
            "mask": tf.cast(mask > 0.5, tf.uint8)}


def augment(dataset: tf.data.Dataset, seed: int, params: AugmentParams | str = AugmentParams()) -> tf.data.Dataset:
    """Augment every slice of an unbatched dataset; fresh draws each epoch, reproducible by seed.
    params: AugmentParams, or the name of one of PRESETS."""
    params = PRESETS[params] if isinstance(params, str) else params
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((dataset, seeds)).map(
        lambda element, pair: augment_slice(element, pair, params),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
