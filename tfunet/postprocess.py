"""From probabilities to a mask: decision threshold, clean-up of connected components, and
horizontal-flip test-time augmentation (TTA), plus their tuning on the validation split.

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

    def describe(self) -> str:
        parts = [f"threshold {self.threshold:g}"]
        if self.min_component_pixels:
            parts.append(f"components >= {self.min_component_pixels} px")
        if self.largest_3d_component:
            parts.append("largest 3-D component")
        if self.tta_flip:
            parts.append("flip TTA")
        return ", ".join(parts)


def predict_with_flip(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray):
    """(probabilities of the images, their mean with those of the mirror images flipped back).

    Both go through `predict` as one batch, which keeps the accelerator as busy as one call.
    """
    images = np.asarray(images)
    n = len(images)
    probs = np.asarray(predict(np.concatenate([images, images[:, :, ::-1]])))
    return probs[:n], (probs[:n] + probs[n:, :, ::-1]) / 2.0


def flip_tta(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
    """Horizontal-flip test-time augmentation: probabilities averaged over image and mirror."""
    return predict_with_flip(predict, images)[1]


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


def slice_masks(probs: np.ndarray, settings: Settings) -> np.ndarray:
    """The steps that look at one slice at a time (threshold, small components), on any batch
    of slices: probabilities -> bool masks."""
    return remove_small_components(np.asarray(probs) >= settings.threshold, settings.min_component_pixels)


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
    """What tuning needs of one validation patient: truth and both kinds of probabilities."""

    truth: np.ndarray
    probs: np.ndarray
    probs_tta: np.ndarray | None = None


def tune(patients: Iterable[ValidationPatient], objective: Callable[[list, list], float],
         steps: Iterable[str] = ("tta_flip", "threshold", "min_component_pixels", "largest_3d_component"),
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
            raise ValueError(f"unknown tuning step {step!r}")
        scores = {}
        for value in values:
            candidate = dataclasses.replace(current, **{step: value})
            scores[value] = best if candidate == current else measure(candidate)
        chosen = max(values, key=lambda v: (scores[v], v == getattr(current, step)))
        report.append({"step": step, "before": getattr(current, step), "chosen": chosen,
                       "scores": [{"value": v, "score": scores[v]} for v in values]})
        current, best = dataclasses.replace(current, **{step: chosen}), scores[chosen]
    return current, report
