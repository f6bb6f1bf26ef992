"""Prediction with any exported form of a model, and `tfunet-predict`'s file handling.

`load_predictor(path)` takes a .keras file, a serving SavedModel folder or a .tflite file and
returns a `Predictor`: call it with a uint8 batch N x H x W x 3 of raw pixels (any H and W) for
float32 probabilities N x H x W x 1, or use `.predict` for the metadata's mask as well. All
three run the same computation as the SavedModel's serving signature (resize to the model
size, flip TTA if the metadata says so, resize back, threshold, small-component removal; see
`tfunet.export`), so a mask does not depend on which file produced it beyond the numerics of
the format. The volume-level largest-3D-component step is never applied here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from tfunet.console import interactive
from tfunet.errors import TfunetError
from tfunet.fileio import atomic_path

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
# Files a folder holds beside its images that are not inputs: ground-truth masks (LGG's
# `_mask.tif`) and this command's own outputs.
OUTPUT_SUFFIXES = ("_mask", "_overlay")
OVERLAY_COLOUR = np.array([255, 0, 0], np.float32)
OVERLAY_ALPHA = 0.45


class Predictor:
    """A model in any exported form behind one call; see the module docstring."""

    def __init__(self, kind: str, path: Path, meta: dict, probabilities_fn, outputs_fn):
        self.kind = kind
        self.path = path
        self.meta = meta
        self.image_size = int(meta["image_size"])
        self._probabilities = probabilities_fn
        self._outputs = outputs_fn

    @staticmethod
    def _check(images) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise TfunetError(f"a predictor takes a uint8 batch N x H x W x 3 of raw pixels, "
                              f"got {images.dtype} {images.shape}")
        return images

    def __call__(self, images) -> np.ndarray:
        """float32 probabilities N x H x W x 1."""
        return np.asarray(self._probabilities(self._check(images)), np.float32)

    def predict(self, images) -> dict[str, np.ndarray]:
        """{"probabilities": float32 N x H x W x 1, "mask": uint8 0/1 N x H x W x 1}."""
        out = self._outputs(self._check(images))
        return {key: np.asarray(value) for key, value in out.items()}


def _keras_predictor(path: Path) -> Predictor:
    import tensorflow as tf

    from tfunet.export import IMAGES_SPEC, ServingModule, serving_probabilities
    from tfunet.loading import load_keras_model

    model, meta = load_keras_model(path)
    module = ServingModule(model, meta)  # rebuilds the model in float32
    # Probabilities alone (no mask) for callers that threshold themselves, e.g. evaluation.
    probabilities = tf.function(
        lambda images: serving_probabilities(images, module.probability_at_model_size, meta),
        input_signature=[IMAGES_SPEC])
    return Predictor("keras", path, meta, probabilities, module.serve)


def _saved_model_predictor(path: Path) -> Predictor:
    import tensorflow as tf

    from tfunet.metadata import read_metadata

    if not (path / "saved_model.pb").is_file():
        raise TfunetError(f"{path} is a folder but not a SavedModel (no saved_model.pb)")
    meta = read_metadata(path)
    try:
        serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    except (KeyError, OSError, ValueError) as exc:
        raise TfunetError(f"cannot load SavedModel {path}: {str(exc).splitlines()[0]}") from None
    outputs = lambda images: serve(images=tf.constant(images))  # noqa: E731
    return Predictor("saved_model", path, meta, lambda images: outputs(images)["probabilities"], outputs)


def _tflite_predictor(path: Path, num_threads: int | None) -> Predictor:
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from tfunet.export import metadata_mask, serving_probabilities
    from tfunet.metadata import read_metadata

    meta = read_metadata(path)
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=num_threads or os.cpu_count())
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise TfunetError(f"cannot load TFLite model {path}: {str(exc).splitlines()[0]}") from None
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()

    def probability_at_model_size(x):
        # The .tflite has a fixed batch of 1: run the slices one by one.
        probs = []
        for image in np.asarray(x, np.float32):
            interpreter.set_tensor(inp["index"], image[None])
            interpreter.invoke()
            probs.append(interpreter.get_tensor(out["index"]))
        return tf.constant(np.concatenate(probs))

    def probabilities(images):
        return serving_probabilities(tf.constant(images), probability_at_model_size, meta)

    mask = tf.function(lambda probs: metadata_mask(probs, meta), reduce_retracing=True)

    def outputs(images):
        probs = probabilities(images)
        return {"probabilities": probs, "mask": mask(probs)}

    return Predictor("tflite", path, meta, probabilities, outputs)


def load_predictor(path: str | Path, num_threads: int | None = None) -> Predictor:
    """A `Predictor` for a .keras file, a serving SavedModel folder or a .tflite file.

    num_threads: TFLite interpreter threads (default: all cores).
    """
    path = Path(path)
    if not path.exists():
        raise TfunetError(f"model not found: {path}")
    if path.is_dir():
        return _saved_model_predictor(path)
    if path.suffix == ".keras":
        return _keras_predictor(path)
    if path.suffix == ".tflite":
        return _tflite_predictor(path, num_threads)
    raise TfunetError(f"--model must be a .keras file, a SavedModel folder or a .tflite file, got {path}")


# --- files ------------------------------------------------------------------------------------

def read_image(path: Path) -> np.ndarray:
    """An image file as uint8 H x W x 3 (an alpha channel is dropped); TfunetError if unusable."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            image = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                image = np.asarray(im.convert("RGB") if im.mode == "P" else im)
    except Exception as exc:  # decoders raise many types; the first line says what is wrong
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TfunetError(f"cannot read {path}: {reason}") from None
    if image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    if image.ndim != 3 or image.shape[-1] != 3:
        raise TfunetError(f"{path}: shape {image.shape}; the model needs 3 channels "
                          "(pre-contrast, FLAIR, post-contrast)")
    if image.dtype != np.uint8:
        raise TfunetError(f"{path}: pixel type {image.dtype}; the model needs 8-bit (uint8) images")
    return image


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the predicted tumour tinted red."""
    tinted = image.astype(np.float32)
    region = mask.astype(bool)
    tinted[region] = (1 - OVERLAY_ALPHA) * tinted[region] + OVERLAY_ALPHA * OVERLAY_COLOUR
    return np.round(tinted).astype(np.uint8)


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def collect_inputs(inputs, out_dir: Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(image, output stem) pairs for files and folders (searched recursively, sub-folders kept
    under out_dir), and a message for each input that yields nothing."""
    jobs, problems = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                           and not p.stem.endswith(OUTPUT_SUFFIXES))
            if not found:
                problems.append(f"no .tif/.png/.jpg images in folder {item}")
            jobs += [(p, out_dir / p.relative_to(item).parent / p.stem) for p in found]
        elif item.is_file():
            jobs.append((item, out_dir / item.stem))
        else:
            problems.append(f"input not found: {item}")
    return jobs, problems


def predict_files(inputs, model: str | Path, out_dir: str | Path, progress: bool | None = None) -> bool:
    """Write <name>_mask.png (0/255) and <name>_overlay.png under out_dir for every image in
    `inputs` (files or folders). A file that cannot be read or predicted is reported on one line
    and skipped. Returns True if any input failed. progress: a bar (default: when a folder is given
    and stderr is a terminal)."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise TfunetError(f"--out must be a folder, but {out_dir} is a file")
    predictor = load_predictor(model)
    jobs, problems = collect_inputs(inputs, out_dir)
    if progress is None:
        progress = interactive() and any(Path(item).is_dir() for item in inputs)
    for message in problems:
        print(f"tfunet-predict: {message}", file=sys.stderr)
    failed = bool(problems)
    for path, stem in tqdm(jobs, desc="predict", unit="image", disable=not progress, file=sys.stderr):
        try:
            image = read_image(path)
            mask = predictor.predict(image[None])["mask"][0, ..., 0]
            write_png(stem.with_name(f"{stem.name}_mask.png"), mask * np.uint8(255))
            write_png(stem.with_name(f"{stem.name}_overlay.png"), overlay(image, mask))
        except TfunetError as exc:
            tqdm.write(f"tfunet-predict: {exc}; skipped", file=sys.stderr)
            failed = True
    return failed
