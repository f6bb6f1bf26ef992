"""The serving computation: raw uint8 pixels of any size in, probabilities and a mask out.

This is what the exported SavedModel's `serving_default` signature runs, and what every
predictor (`tfunet.predictor`) runs around a `.keras` or `.tflite` model, so a mask does not
depend on which file produced it. For images N x H x W x 3 (uint8, any H and W) it:
resizes to the model size (`tfunet.data.pipeline.resize_image`, as training does), runs the
model, averages with the horizontally flipped input when the settings say so, resizes the
probabilities back to H x W and applies the per-slice post-processing (threshold, small
components scaled by area). The per-slice steps come from `tfunet.postprocess` and the
settings from the model's metadata through `Settings`. The largest-3D-component step needs a
patient's whole volume, which a per-slice request does not carry, so serving never applies it.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfunet.data.pipeline import resize_image
from tfunet.loading import float32_model
from tfunet.postprocess import Settings, flip_average_tf, slice_masks_tf

IMAGES_SPEC = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")
INPUT_HINT = "tfunet: `images` must be a uint8 batch N x H x W x 3 of raw RGB pixels"


def serving_probabilities(images, probability_fn, settings: Settings, image_size: int):
    """uint8 N x H x W x 3 -> float32 probabilities N x H x W x 1; probability_fn maps float32
    raw pixels at the model size to probabilities."""
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    probs = flip_average_tf(probability_fn, resize_image(images, image_size), settings)
    return tf.image.resize(probs, tf.stack([height, width]), method="bilinear")


def serving_outputs(images, probability_fn, settings: Settings, image_size: int) -> dict:
    """{"probabilities": float32 N x H x W x 1, "mask": uint8 0/1 N x H x W x 1}."""
    probs = serving_probabilities(images, probability_fn, settings, image_size)
    return {"probabilities": probs, "mask": slice_masks_tf(probs, settings, image_size)}


def as_list(models) -> list:
    return list(models) if isinstance(models, (list, tuple)) else [models]


class ServingModule(tf.Module):
    """The SavedModel's root: the model, or the members of an ensemble, rebuilt in float32, and
    the `serving_default` function (an ensemble averages its members' probabilities).
    The settings are read from `meta` once, so they are baked in at export."""

    def __init__(self, models: keras.Model | list[keras.Model], meta: dict):
        super().__init__(name="tfunet_serving")
        self.models = [float32_model(model) for model in as_list(models)]
        settings, size = Settings.from_metadata(meta), int(meta["image_size"])
        # Captured by the closure, not stored: a tf.Module would try to track them.
        self.serve = tf.function(lambda images: self._serve(images, settings, size),
                                 input_signature=[IMAGES_SPEC])

    def probability_at_model_size(self, x):
        """float32 raw pixels N x size x size x 3 -> probabilities N x size x size x 1."""
        probs = [tf.sigmoid(model(x, training=False)) for model in self.models]
        return probs[0] if len(probs) == 1 else tf.add_n(probs) / float(len(probs))

    def _serve(self, images, settings, size):
        # A loaded signature checks the dtype (and the resize the rank) but not the channels.
        with tf.control_dependencies([tf.debugging.Assert(tf.equal(tf.shape(images)[-1], 3), [INPUT_HINT])]):
            images = tf.identity(images)
        return serving_outputs(images, self.probability_at_model_size, settings, size)
