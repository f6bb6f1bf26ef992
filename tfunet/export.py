"""Writing exports: a serving SavedModel that takes raw pixels, and TFLite files for devices.

This module only writes files; the serving computation is `tfunet.serving`, loading and the
float32 rebuild are `tfunet.loading`.

SavedModel (TensorFlow Serving). Its `serving_default` signature takes `images`, a uint8
batch N x H x W x 3 of any H and W, and returns `probabilities` (float32 N x H x W x 1) and
`mask` (uint8 0/1 N x H x W x 1), as `tfunet.serving` describes. The post-processing
settings are baked in at export time: re-export after tuning them.

TFLite. The float32 model plus a sigmoid, exported with `model.export(format="tf_saved_model")`
and converted from that SavedModel with built-in ops only (no Flex/SELECT_TF_OPS), so the stock
LiteRT runtime runs it. Input: fixed 1 x size x size x 3 float32 of raw 0..255 pixels; output:
1 x size x size x 1 float32 probabilities. Quantizations: none, float16 (weights), dynamic
(int8 weights, float activations) and int8 (full-integer: weights and activations, calibrated
on training images of the model's own split; float input/output are quantized at the edges).
Resizing and post-processing happen outside the .tflite, in `tfunet.predictor`.

Every entry point here (`export_saved_model`, `convert_tflite`, `export_tflite`, `export`)
takes a model of any dtype policy and rebuilds it in float32 itself, through
`tfunet.loading.float32_model`: a bfloat16 graph does not convert to TFLite, and serving
should not depend on the trainer's hardware. Every export's metadata records
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

from tfunet.errors import TfunetError
from tfunet.fileio import atomic_path
from tfunet.loading import FLOAT32, float32_model, is_mixed_precision, load_keras_models
from tfunet.metadata import metadata_path, write_metadata
from tfunet.serving import ServingModule, as_list

METADATA_ASSET = "tfunet.json"
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")  # tfunet-export --quantize (TFLite)


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


def export_saved_model(model: keras.Model | list[keras.Model], meta: dict, out_dir: str | Path) -> Path:
    """Write the serving SavedModel of `model`, or of an ensemble of models (any dtype policy;
    served in float32) to `out_dir` (metadata at out_dir/tfunet.json and in assets/)."""
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

def probability_model(models: keras.Model | list[keras.Model]) -> keras.Model:
    """The U-Net with a sigmoid on top: devices get probabilities, and int8 quantizes [0, 1]
    far more finely than the logits' range. Several models (an ensemble, all float32 and of one
    input size) share the input and their probabilities are averaged, in one graph."""
    models = as_list(models)
    if len(models) == 1:
        model = models[0]
        probs = keras.layers.Activation("sigmoid", dtype="float32", name="probabilities")(model.outputs[0])
        return keras.Model(model.inputs, probs, name=f"{model.name}_probabilities")
    image = keras.Input(models[0].inputs[0].shape[1:], name="image")
    named = {}
    for model in models:  # a functional model needs distinct names for distinct members
        if id(model) not in named:
            model.name = f"member_{len(named)}"
            named[id(model)] = model
    probs = [keras.layers.Activation("sigmoid", dtype="float32", name=f"probabilities_{i}")(model(image))
             for i, model in enumerate(models)]
    average = keras.layers.Average(dtype="float32", name="probabilities")(probs)
    return keras.Model(image, average, name="ensemble_probabilities")


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


def convert_tflite(model: keras.Model | list[keras.Model], image_size: int, quantize: str = "none",
                   calibration: np.ndarray | None = None) -> bytes:
    """The .tflite bytes of `model` (or of an ensemble of models, averaged) with a sigmoid,
    fixed batch 1, built-in ops only.

    `model` may compute in any dtype policy: it is rebuilt in float32 from its own layer
    configs (`tfunet.loading.float32_model`), so no metadata is needed."""
    _check_quantize(quantize)
    if quantize == "int8" and calibration is None:
        raise TfunetError("int8 quantization needs calibration images")
    models = [float32_model(m) for m in as_list(model)]
    spec = tf.TensorSpec((1, image_size, image_size, models[0].inputs[0].shape[-1]), tf.float32, name="image")
    with tempfile.TemporaryDirectory() as scratch:
        probability_model(models).export(scratch, format="tf_saved_model", input_signature=[spec], verbose=False)
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


def export_tflite(model: keras.Model | list[keras.Model], meta: dict, out_path: str | Path, quantize: str = "none",
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

def export(model_path, saved_model: str | Path | None = None,
           tflite: str | Path | None = None, quantize: str = "none",
           calibration_samples: int = 100, data_dir: str | None = None) -> dict:
    """Export a .keras model, or an ensemble (several .keras files, or a K-fold run's
    saved_models/ folder: see `tfunet.loading.find_members`), to one serving SavedModel and/or
    one TFLite file; returns what was written."""
    if saved_model is None and tflite is None:
        raise TfunetError("nothing to export: give --saved-model and/or --tflite")
    _check_quantize(quantize)
    sources = [model_path] if isinstance(model_path, (str, Path)) else list(model_path)
    if tflite is not None and any(metadata_path(tflite).resolve() == metadata_path(m).resolve() for m in sources):
        raise TfunetError(f"--tflite {tflite} would share its metadata file {metadata_path(tflite)} "
                          "with --model; pick another name (e.g. add the quantization)")
    if calibration_samples < 1:
        raise TfunetError(f"--calibration-samples must be at least 1, got {calibration_samples}")
    models, meta = load_keras_models(model_path)
    rebuilt = any(is_mixed_precision(model) for model in models)
    # Once here, so the SavedModel and the TFLite share one rebuild.
    models = [float32_model(model) for model in models]
    meta = export_record(meta, source=[str(m) for m in sources] if len(sources) > 1 else str(sources[0]),
                         rebuilt_in_float32=rebuilt)
    written = {"rebuilt_in_float32": rebuilt, "policy": FLOAT32, "members": len(models)}
    if saved_model is not None:
        written["saved_model"] = str(export_saved_model(models, meta, saved_model))
    if tflite is not None:
        calibration = None
        if quantize == "int8":
            calibration = calibration_images(meta, calibration_samples, data_dir)
        written["tflite"] = str(export_tflite(models, meta, tflite, quantize, calibration))
    return written
