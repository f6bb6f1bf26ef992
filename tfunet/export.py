"""Exports for serving: a SavedModel that takes raw pixels, and TFLite files for devices.

SavedModel (TensorFlow Serving). Its `serving_default` signature takes `images`, a uint8
batch N x H x W x 3 of any H and W, and does everything a client would otherwise have to get
right: resize to the model size (bilinear, rounded back to uint8 values, exactly as the
training pipeline does), run the U-Net, optionally average with the horizontally flipped
input (metadata `postprocess.tta_flip`), resize the probabilities back to H x W and apply the
model's post-processing. It returns
    probabilities  float32 N x H x W x 1
    mask           uint8   N x H x W x 1, 0/1: probability >= metadata `threshold`, then
                   connected components (4-connected, per slice) smaller than
                   `postprocess.min_component_pixels` removed. That count is in pixels at the
                   model size and is scaled by (H x W) / size^2 for other input sizes.
The settings are baked in at export time: re-export after tuning them. The largest-3D-component
step (`postprocess.largest_3d_component`) needs a patient's whole volume, which a per-slice
request does not carry, so serving (and `tfunet-predict`) never apply it.

TFLite. The float32 model plus a sigmoid, exported with `model.export(format="tf_saved_model")`
and converted from that SavedModel with built-in ops only (no Flex/SELECT_TF_OPS), so the stock
LiteRT runtime runs it. Input: fixed 1 x size x size x 3 float32 of raw 0..255 pixels; output:
1 x size x size x 1 float32 probabilities. Quantizations: none, float16 (weights), dynamic
(int8 weights, float activations) and int8 (full-integer: weights and activations, calibrated
on training images of the model's own split; float input/output are quantized at the edges).
Resizing and post-processing happen outside the .tflite, in `tfunet.predict`.

Every entry point here (`ServingModule`, `export_saved_model`, `convert_tflite`,
`export_tflite`, `export`) takes a model of any dtype policy and rebuilds it in float32 itself,
through `tfunet.loading.float32_model`: a bfloat16 graph does not convert to TFLite, and
serving should not depend on the trainer's hardware. Every export's metadata records
`export.policy: float32`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tfunet.config import QUANTIZATIONS
from tfunet.errors import TfunetError
from tfunet.fileio import atomic_path
from tfunet.loading import FLOAT32, float32_model, is_mixed_precision, load_keras_model
from tfunet.metadata import metadata_path, write_metadata

METADATA_ASSET = "tfunet.json"


# --- the serving computation (graph ops; also run eagerly around a TFLite interpreter) --------

def resize_images(images, size: int):
    """uint8 N x H x W x 3 -> float32 N x size x size x 3, resized as the training pipeline does
    (bilinear, then rounded and clipped to uint8 values). At the model size it is the identity."""
    x = tf.image.resize(images, (size, size), method="bilinear")
    return tf.clip_by_value(tf.round(x), 0.0, 255.0)


def flip_averaged(probability_fn, x, tta_flip: bool):
    """probability_fn(x), averaged with its horizontally flipped twin when `tta_flip`."""
    probs = probability_fn(x)
    if tta_flip:
        flipped = tf.reverse(probability_fn(tf.reverse(x, axis=[2])), axis=[2])
        probs = (probs + flipped) / 2.0
    return probs


def remove_small_components(mask, min_pixels):
    """Drop 4-connected components of fewer than `min_pixels` pixels, per slice.

    mask: bool N x H x W. Graph ops only, so it runs inside the SavedModel. Every foreground
    pixel starts with its own id (flat index + 1); each round, ids spread to the 4 neighbours
    by max and then jump: a pixel takes the id held by the pixel its id names, which is in the
    same component and holds an id at least as large. Both steps only raise ids, so a round
    that changes nothing means every component carries one id, its largest; sizes are then
    counted per id. Jumping makes long thin components take far fewer rounds than their length.
    """
    shape = tf.shape(mask)
    count = tf.reduce_prod(shape)
    labels = tf.where(mask, tf.reshape(tf.range(1, count + 1, dtype=tf.int32), shape), 0)

    def round_(labels, _):
        padded = tf.pad(labels, [[0, 0], [1, 1], [1, 1]])
        new = tf.maximum(tf.maximum(labels, padded[:, :-2, 1:-1]), padded[:, 2:, 1:-1])
        new = tf.maximum(tf.maximum(new, padded[:, 1:-1, :-2]), padded[:, 1:-1, 2:])
        new = tf.where(mask, new, 0)
        for _ in range(2):
            new = tf.where(mask, tf.gather(tf.reshape(new, [-1]), tf.maximum(new - 1, 0)), 0)
        return new, tf.reduce_any(tf.not_equal(new, labels))

    labels, _ = tf.while_loop(lambda labels, changed: changed, round_, (labels, tf.constant(True)))
    sizes = tf.math.unsorted_segment_sum(tf.ones_like(labels), labels, count + 1)
    return mask & (tf.gather(sizes, labels) >= min_pixels)


def postprocess_mask(probs, threshold: float, min_component_pixels: int, image_size: int):
    """float32 N x H x W x 1 probabilities -> uint8 0/1 mask (threshold, small-component removal)."""
    mask = probs[..., 0] >= threshold
    if min_component_pixels > 0:
        area = tf.cast(tf.shape(probs)[1] * tf.shape(probs)[2], tf.float32)
        min_pixels = tf.cast(tf.round(min_component_pixels * area / float(image_size ** 2)), tf.int32)
        mask = remove_small_components(mask, tf.maximum(min_pixels, 1))
    return tf.cast(mask, tf.uint8)[..., None]


def serving_probabilities(images, probability_fn, meta: dict):
    """Raw uint8 pixels N x H x W x 3 -> float32 probabilities N x H x W x 1: resize to the model
    size, probability_fn (float32 raw pixels at the model size -> probabilities), flip TTA if
    the metadata says so, resize back."""
    size = int(meta["image_size"])
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    probs = flip_averaged(probability_fn, resize_images(images, size), bool(meta["postprocess"]["tta_flip"]))
    return tf.image.resize(probs, tf.stack([height, width]), method="bilinear")


def metadata_mask(probs, meta: dict):
    """The mask the metadata's threshold and per-slice post-processing make of `probs`."""
    return postprocess_mask(probs, float(meta["threshold"]),
                            int(meta["postprocess"]["min_component_pixels"]), int(meta["image_size"]))


IMAGES_SPEC = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")
INPUT_HINT = "tfunet: `images` must be a uint8 batch N x H x W x 3 of raw RGB pixels"


class ServingModule(tf.Module):
    """The SavedModel's root: the model rebuilt in float32 and the `serving_default` function."""

    def __init__(self, model: keras.Model, meta: dict):
        super().__init__(name="tfunet_serving")
        self.model = float32_model(model)
        # meta is captured by the closure, not stored: a tf.Module would try to track the dict.
        self.serve = tf.function(lambda images: self._serve(images, meta), input_signature=[IMAGES_SPEC])

    def probability_at_model_size(self, x):
        """float32 raw pixels N x size x size x 3 -> probabilities N x size x size x 1."""
        return tf.sigmoid(self.model(x, training=False))

    def _serve(self, images, meta):
        # A loaded signature checks the dtype (and the resize the rank) but not the channels.
        with tf.control_dependencies([tf.debugging.Assert(tf.equal(tf.shape(images)[-1], 3), [INPUT_HINT])]):
            images = tf.identity(images)
        probs = serving_probabilities(images, self.probability_at_model_size, meta)
        return {"probabilities": probs, "mask": metadata_mask(probs, meta)}


# --- SavedModel -------------------------------------------------------------------------------

def _replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished folder into place; an existing target is swapped out, then deleted, so a
    reader sees the old complete folder or the new one (or, for an instant, none), never a mix."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old.{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_record(meta: dict, **fields) -> dict:
    """`meta` with its `export` record extended by `fields` and the policy exports run in."""
    return {**meta, "export": {**meta.get("export", {}), **fields, "policy": FLOAT32}}


def export_saved_model(model: keras.Model, meta: dict, out_dir: str | Path) -> Path:
    """Write the serving SavedModel of `model` (any dtype policy; served in float32) to
    `out_dir` (metadata at out_dir/tfunet.json and in assets/)."""
    meta = export_record(meta)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise TfunetError(f"--saved-model must be a folder, but {out_dir} is a file")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a model server may run as another user
    try:
        module = ServingModule(model, meta)
        with tempfile.TemporaryDirectory() as scratch:
            meta_file = Path(scratch) / METADATA_ASSET
            write_metadata(scratch, meta)  # a folder's metadata is folder/tfunet.json
            module.metadata_file = tf.saved_model.Asset(str(meta_file))
            tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve})
        write_metadata(tmp, meta)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# --- TFLite -----------------------------------------------------------------------------------

def probability_model(model: keras.Model) -> keras.Model:
    """The U-Net with a sigmoid on top: devices get probabilities, and int8 quantizes [0, 1]
    far more finely than the logits' range."""
    probs = keras.layers.Activation("sigmoid", dtype="float32", name="probabilities")(model.outputs[0])
    return keras.Model(model.inputs, probs, name=f"{model.name}_probabilities")


def calibration_images(meta: dict, num_images: int, data_dir: str | None = None) -> np.ndarray:
    """`num_images` training slices of the model's own dataset and split, float32 raw pixels at
    the model size, drawn with the config's seed."""
    from tfunet.data.pipeline import make_pipeline
    from tfunet.data.sources import config_for_model, splits_for_model

    config = config_for_model(meta, data_dir=data_dir)
    ds = make_pipeline(splits_for_model(config, meta).dataset("train"), image_size=int(meta["image_size"]),
                       batch_size=1, training=True, seed=config.seed)
    images = [x.numpy() for x, _ in ds.take(num_images)]
    if not images:
        raise TfunetError("int8 calibration found no training images in the model's dataset")
    return np.concatenate(images).astype(np.float32)


def _check_quantize(quantize: str) -> None:
    if quantize not in QUANTIZATIONS:
        raise TfunetError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")


def convert_tflite(model: keras.Model, image_size: int, quantize: str = "none",
                   calibration: np.ndarray | None = None) -> bytes:
    """The .tflite bytes of `model` with a sigmoid, fixed batch 1, built-in ops only.

    `model` may compute in any dtype policy: it is rebuilt in float32 from its own layer
    configs (`tfunet.loading.float32_model`), so no metadata is needed."""
    _check_quantize(quantize)
    if quantize == "int8" and calibration is None:
        raise TfunetError("int8 quantization needs calibration images")
    spec = tf.TensorSpec((1, image_size, image_size, model.inputs[0].shape[-1]), tf.float32, name="image")
    with tempfile.TemporaryDirectory() as scratch:
        probability_model(float32_model(model)).export(scratch, format="tf_saved_model", input_signature=[spec],
                                        verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(scratch)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.representative_dataset = lambda: ([image[None]] for image in calibration)
        return converter.convert()


def export_tflite(model: keras.Model, meta: dict, out_path: str | Path, quantize: str = "none",
                  calibration: np.ndarray | None = None) -> Path:
    """Write a .tflite of `model` (any dtype policy; converted in float32) atomically, with its
    metadata beside it (out.json)."""
    out_path = Path(out_path)
    if out_path.suffix != ".tflite":
        raise TfunetError(f"--tflite must end in .tflite, got {out_path}")
    content = convert_tflite(model, int(meta["image_size"]), quantize, calibration)
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(content)
    extra = {"calibration_images": len(calibration)} if calibration is not None else {}
    write_metadata(out_path, export_record(meta, tflite_quantize=quantize, **extra))
    return out_path


# --- the whole export, as tfunet-export runs it -----------------------------------------------

def export(model_path: str | Path, saved_model: str | Path | None = None,
           tflite: str | Path | None = None, quantize: str = "none",
           calibration_samples: int = 100, data_dir: str | None = None) -> dict:
    """Export a .keras model to a serving SavedModel and/or a TFLite file; returns what was written."""
    if saved_model is None and tflite is None:
        raise TfunetError("nothing to export: give --saved-model and/or --tflite")
    _check_quantize(quantize)
    if tflite is not None and metadata_path(tflite).resolve() == metadata_path(model_path).resolve():
        raise TfunetError(f"--tflite {tflite} would share its metadata file {metadata_path(tflite)} "
                          "with --model; pick another name (e.g. add the quantization)")
    if calibration_samples < 1:
        raise TfunetError(f"--calibration-samples must be at least 1, got {calibration_samples}")
    model, meta = load_keras_model(model_path)
    rebuilt = is_mixed_precision(model)
    model = float32_model(model)  # once here, so the SavedModel and the TFLite share one rebuild
    meta = export_record(meta, source=str(model_path), rebuilt_in_float32=rebuilt)
    written = {"rebuilt_in_float32": rebuilt, "policy": FLOAT32}
    if saved_model is not None:
        written["saved_model"] = str(export_saved_model(model, meta, saved_model))
    if tflite is not None:
        calibration = None
        if quantize == "int8":
            calibration = calibration_images(meta, calibration_samples, data_dir)
        written["tflite"] = str(export_tflite(model, meta, tflite, quantize, calibration))
    return written
