"""From probabilities to a mask: decision threshold, clean-up of connected components, and
horizontal-flip test-time augmentation (TTA), plus their tuning on the validation split.

Every per-slice step exists once per backend, here and nowhere else, and both read one
`Settings`: NumPy/SciPy (`flip_average`, `remove_small_components`, `slice_masks`) for
evaluation and volumes, and TensorFlow graph ops (`flip_average_tf`,
`remove_small_components_tf`, `slice_masks_tf`) that run inside the serving SavedModel.
tests/test_postprocess.py runs every per-slice step through both and requires identical masks.
The 3-D step (`keep_largest_3d_component`) needs a whole volume and is NumPy only.

A setting is only worth turning on if it helps patients the model has not seen, so `tune`
measures each step on validation before adopting it, and the chosen `Settings` are written to
the model's metadata (keys threshold, postprocess.*) where prediction and serving read them.
Connected components come from `scipy.ndimage.label`:
  * small components are counted per slice in 2-D, 4-connected (as the exported SavedModel
    does, so evaluation and serving agree);
  * the largest component is counted per patient in 3-D, 26-connected (slices stacked in order),
    because a low-grade glioma is one lesion: stray blobs elsewhere are false positives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np
from scipy import ndimage

from tfunet.errors import TfunetError

# 4-connectivity within a slice, nothing across slices: labels a whole (S, H, W) volume at once
# while keeping each slice's components apart.
_SLICE_STRUCTURE = np.zeros((3, 3, 3), bool)
_SLICE_STRUCTURE[1] = ndimage.generate_binary_structure(2, 1)
_VOLUME_STRUCTURE = np.ones((3, 3, 3), bool)

THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.10, 0.91, 0.05))
MIN_COMPONENT_PIXELS = (0, 10, 25, 50, 100, 200, 400)
# What `tune` measures, in this order, by default (`tfunet-evaluate --tune`).
TUNE_STEPS = ("tta_flip", "threshold", "min_component_pixels", "largest_3d_component")
# The evaluation summary figures tuning may maximise (all: higher is better).
TUNE_METRICS = ("dice_pooled", "patient_dice_mean", "patient_dice_median", "dice", "dice_tumour_slices")


@dataclasses.dataclass(frozen=True)
class Settings:
    """How probabilities become a mask; defaults reproduce the plain model output."""

    threshold: float = 0.5
    min_component_pixels: int = 0
    largest_3d_component: bool = False
    tta_flip: bool = False

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0:
            raise TfunetError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.min_component_pixels < 0:
            raise TfunetError(f"min-component-pixels must be >= 0, got {self.min_component_pixels}")

    @classmethod
    def from_metadata(cls, meta: dict) -> Settings:
        post = meta.get("postprocess") or {}
        return cls(threshold=float(meta.get("threshold", cls.threshold)),
                   min_component_pixels=int(post.get("min_component_pixels", 0)),
                   largest_3d_component=bool(post.get("largest_3d_component", False)),
                   tta_flip=bool(post.get("tta_flip", False)))

    def to_metadata(self) -> dict:
        """The `update_metadata` keyword arguments that store these settings."""
        return {"threshold": self.threshold,
                "postprocess": {"min_component_pixels": self.min_component_pixels,
                                "largest_3d_component": self.largest_3d_component,
                                "tta_flip": self.tta_flip}}

    def min_pixels_at(self, height: int, width: int, image_size: int) -> int:
        """`min_component_pixels` counts pixels at the model size; at H x W it scales by area
        (at least 1 when the step is on)."""
        if not self.min_component_pixels:
            return 0
        return max(1, round(self.min_component_pixels * height * width / image_size ** 2))

    def describe(self) -> str:
        parts = [f"threshold {self.threshold:g}"]
        if self.min_component_pixels:
            parts.append(f"components >= {self.min_component_pixels} px")
        if self.largest_3d_component:
            parts.append("largest 3-D component")
        if self.tta_flip:
            parts.append("flip TTA")
        return ", ".join(parts)


# --- per-slice steps, NumPy/SciPy ----------------------------------------------------------------

def flip_average(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray):
    """(probabilities of the images, their mean with those of the mirror images flipped back).

    Both go through `predict` as one batch, which keeps the accelerator as busy as one call;
    tuning needs both, so both are returned.
    """
    images = np.asarray(images)
    n = len(images)
    probs = np.asarray(predict(np.concatenate([images, images[:, :, ::-1]])))
    return probs[:n], (probs[:n] + probs[n:, :, ::-1]) / 2.0


def remove_small_components(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """Drop the 2-D components (per slice, 4-connected) of fewer than `min_pixels` pixels.

    mask: bool (S, H, W) or (S, H, W, 1).
    """
    mask = np.asarray(mask, bool)
    if min_pixels <= 1 or not mask.any():
        return mask
    volume = mask.reshape(mask.shape[:3])
    labels, _ = ndimage.label(volume, structure=_SLICE_STRUCTURE)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[labels].reshape(mask.shape)


def slice_masks(probs: np.ndarray, settings: Settings, image_size: int | None = None) -> np.ndarray:
    """The steps that look at one slice at a time (threshold, small components), on a batch
    (N, H, W, 1) of probabilities -> bool masks. image_size: the model size, when H x W differs
    from it (component sizes scale by area)."""
    probs = np.asarray(probs)
    min_pixels = settings.min_component_pixels
    if image_size:
        min_pixels = settings.min_pixels_at(probs.shape[1], probs.shape[2], image_size)
    return remove_small_components(probs >= settings.threshold, min_pixels)


# --- per-slice steps, TensorFlow graph ops (the serving SavedModel) --------------------------------

def flip_average_tf(probability_fn, x, settings: Settings):
    """probability_fn(x), averaged with its horizontally flipped twin when `settings.tta_flip`."""
    import tensorflow as tf

    probs = probability_fn(x)
    if settings.tta_flip:
        flipped = tf.reverse(probability_fn(tf.reverse(x, axis=[2])), axis=[2])
        probs = (probs + flipped) / 2.0
    return probs


def remove_small_components_tf(mask, min_pixels):
    """`remove_small_components` in graph ops: mask bool N x H x W, 4-connected, per slice.

    Every foreground pixel starts with its own id (flat index + 1); each round, ids spread to the
    4 neighbours by max and then jump: a pixel takes the id held by the pixel its id names, which
    is in the same component and holds an id at least as large. Both steps only raise ids, so a
    round that changes nothing means every component carries one id, its largest; sizes are then
    counted per id. Jumping makes long thin components take far fewer rounds than their length.
    """
    import tensorflow as tf

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


def slice_masks_tf(probs, settings: Settings, image_size: int):
    """`slice_masks` in graph ops: float32 N x H x W x 1 -> uint8 0/1 mask, with component sizes
    scaled by area as in `Settings.min_pixels_at` (H and W are only known in the graph)."""
    import tensorflow as tf

    mask = probs[..., 0] >= settings.threshold
    if settings.min_component_pixels > 0:
        area = tf.cast(tf.shape(probs)[1] * tf.shape(probs)[2], tf.float32)
        min_pixels = tf.cast(tf.round(settings.min_component_pixels * area / float(image_size ** 2)), tf.int32)
        mask = remove_small_components_tf(mask, tf.maximum(min_pixels, 1))
    return tf.cast(mask, tf.uint8)[..., None]


# --- the volume step, NumPy ------------------------------------------------------------------------

def keep_largest_3d_component(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest 3-D component (26-connected) of one patient's slices in order.

    mask: bool (S, H, W) or (S, H, W, 1); an empty mask stays empty.
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        return mask
    volume = mask.reshape(mask.shape[:3])
    labels, count = ndimage.label(volume, structure=_VOLUME_STRUCTURE)
    if count == 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return (labels == np.argmax(sizes)).reshape(mask.shape)


def patient_mask(masks: np.ndarray, settings: Settings) -> np.ndarray:
    """The step that needs a patient's whole volume (largest 3-D component), on its slice masks
    in order."""
    return keep_largest_3d_component(masks) if settings.largest_3d_component else masks


def to_mask(probs: np.ndarray, settings: Settings) -> np.ndarray:
    """One patient's probabilities (slices in order) -> bool mask, through every enabled step.

    TTA is not applied here: it changes the probabilities, so it happens at prediction time.
    """
    return patient_mask(slice_masks(probs, settings), settings)


# --- tuning on validation -----------------------------------------------------------------------

@dataclasses.dataclass
class ValidationPatient:
    """What tuning needs of one validation (or out-of-fold) patient: truth and both kinds of
    probabilities, slices in order."""

    truth: np.ndarray
    probs: np.ndarray
    probs_tta: np.ndarray | None = None
    patient_id: str = ""


def tune(patients: Iterable[ValidationPatient], objective: Callable[[list, list], float],
         steps: Iterable[str] = TUNE_STEPS,
         start: Settings = Settings(), thresholds=THRESHOLDS, min_pixels=MIN_COMPONENT_PIXELS):
    """Choose settings step by step on validation; return (settings, report).

    Each step tries its candidates with the earlier choices in place and adopts a candidate
    only if it raises `objective(masks, truths)` above the current setting (ties keep the
    simpler, current setting). `report` lists every candidate's score per step, so what was
    turned on, and by how much it helped, is on record.
    """
    patients = list(patients)
    truths = [p.truth for p in patients]
    if not patients:
        raise TfunetError("tuning needs at least one validation patient")

    def measure(settings: Settings) -> float:
        masks = [to_mask(p.probs_tta if settings.tta_flip else p.probs, settings) for p in patients]
        return float(objective(masks, truths))

    current = start
    best = measure(current)
    report = []
    for step in steps:
        if step == "tta_flip":
            if any(p.probs_tta is None for p in patients):
                raise TfunetError("tuning TTA needs flipped predictions of every validation patient")
            values = [current.tta_flip, not current.tta_flip]
        elif step == "threshold":
            values = sorted({current.threshold, *thresholds})
        elif step == "min_component_pixels":
            values = sorted({current.min_component_pixels, *min_pixels})
        elif step == "largest_3d_component":
            values = [current.largest_3d_component, not current.largest_3d_component]
        else:
            raise TfunetError(f"unknown tuning step {step!r}; choose from {', '.join(TUNE_STEPS)}")
        scores = {}
        for value in values:
            candidate = dataclasses.replace(current, **{step: value})
            scores[value] = best if candidate == current else measure(candidate)
        chosen = max(values, key=lambda v: (scores[v], v == getattr(current, step)))
        report.append({"step": step, "before": getattr(current, step), "chosen": chosen,
                       "scores": [{"value": v, "score": scores[v]} for v in values]})
        current, best = dataclasses.replace(current, **{step: chosen}), scores[chosen]
    return current, report
