"""Segmentation metrics, defined once for training, evaluation and reports.

All metrics compare a binary prediction P (probability >= threshold) with a binary truth T,
through the pixel counts TP = |P and T|, FP = |P and not T|, FN = |T and not P|:

    Dice      = 2 TP / (2 TP + FP + FN)     (= F1 of the pixels)
    Jaccard   = TP / (TP + FP + FN)         (IoU)
    Precision = TP / (TP + FP)
    Recall    = TP / (TP + FN)

Two averagings:
  * per-slice: the ratio is computed for each slice, then averaged over slices. A ratio whose
    denominator is 0 counts 1: an empty truth with an empty prediction is a perfect slice (as
    in the PyTorch original), a slice with nothing predicted has precision 1, and a slice with
    nothing to find has recall 1. Empty slices therefore lift this average.
  * pooled: TP, FP and FN are summed over every pixel of every slice first, then one ratio is
    taken (0/0 again counts 1). Empty slices only count through their false positives.

The same definitions exist as NumPy functions (reports) and as Keras metrics (`compile`); the
Keras metrics take logits, as the model outputs them.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

AVERAGINGS = ("per_slice", "pooled")


# --- NumPy ------------------------------------------------------------------------------------

def confusion_counts(pred, truth):
    """Per-slice TP, FP, FN of binary arrays shaped (N, ...); returns three int64 arrays (N,)."""
    pred = np.asarray(pred).astype(bool).reshape(len(pred), -1)
    truth = np.asarray(truth).astype(bool).reshape(len(truth), -1)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match truth shape {truth.shape}")
    tp = np.sum(pred & truth, axis=1, dtype=np.int64)
    fp = np.sum(pred & ~truth, axis=1, dtype=np.int64)
    fn = np.sum(~pred & truth, axis=1, dtype=np.int64)
    return tp, fp, fn


# The one table of ratios: metric -> (numerator, denominator) of the counts. The lambdas use only
# arithmetic, so the NumPy functions and the Keras metric evaluate the same entries.
RATIOS = {
    "dice": (lambda tp, fp, fn: 2 * tp, lambda tp, fp, fn: 2 * tp + fp + fn),
    "jaccard": (lambda tp, fp, fn: tp, lambda tp, fp, fn: tp + fp + fn),
    "precision": (lambda tp, fp, fn: tp, lambda tp, fp, fn: tp + fp),
    "recall": (lambda tp, fp, fn: tp, lambda tp, fp, fn: tp + fn),
}
METRICS = tuple(RATIOS)


def _check_metric(metric: str) -> None:
    if metric not in RATIOS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")


def ratio_from_counts(metric: str, tp, fp, fn, empty_score: float | None = 1.0):
    """The metric's ratio for counts (scalars or arrays). A zero denominator (e.g. an empty
    truth and an empty prediction for Dice) gives `empty_score`; None gives NaN, which the
    averages below leave out (as MONAI's `ignore_empty` does)."""
    _check_metric(metric)
    num_fn, den_fn = RATIOS[metric]
    tp, fp, fn = (np.asarray(c, dtype=np.float64) for c in (tp, fp, fn))
    num, den = num_fn(tp, fp, fn), den_fn(tp, fp, fn)
    empty = np.nan if empty_score is None else empty_score
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), empty)


def score(metric: str, pred, truth, averaging: str = "per_slice", empty_score: float | None = 1.0) -> float:
    """One metric of binary predictions against binary truths shaped (N, ...)."""
    tp, fp, fn = confusion_counts(pred, truth)
    if averaging == "per_slice":
        ratios = ratio_from_counts(metric, tp, fp, fn, empty_score)
        return float(np.nanmean(ratios)) if np.isfinite(ratios).any() else float("nan")
    if averaging == "pooled":
        return float(ratio_from_counts(metric, tp.sum(), fp.sum(), fn.sum(), empty_score))
    raise ValueError(f"unknown averaging {averaging!r}; choose one of {AVERAGINGS}")


def dice(pred, truth, averaging="per_slice", empty_score: float | None = 1.0) -> float:
    return score("dice", pred, truth, averaging, empty_score)


def all_scores(pred, truth) -> dict[str, float]:
    """Every metric in both averagings, keyed like the Keras metrics ("dice", "dice_pooled", ...)."""
    return scores_from_counts(*confusion_counts(pred, truth))


def scores_from_counts(tp, fp, fn) -> dict[str, float]:
    """`all_scores` from per-slice counts, so long evaluations need not keep the masks."""
    out = {}
    for metric in METRICS:
        out[metric] = float(np.mean(ratio_from_counts(metric, tp, fp, fn)))
        out[f"{metric}_pooled"] = float(ratio_from_counts(metric, tp.sum(), fp.sum(), fn.sum()))
    return out


def counts_by_patient(patient_ids, tp, fp, fn):
    """Per-slice counts summed per patient: (sorted ids, tp, fp, fn), each of length n_patients.

    A patient's sums are the counts of its stacked slices as one 3-D volume.
    """
    ids, index = np.unique(np.asarray(patient_ids), return_inverse=True)
    sums = [np.bincount(index, weights=c, minlength=len(ids)).astype(np.int64) for c in (tp, fp, fn)]
    return (ids, *sums)


# --- Keras ------------------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="tfunet")
class SegmentationMetric(keras.metrics.Metric):
    """A Keras metric over thresholded sigmoid(logits); see the module docstring.

    State is float32: pooled counts stay exact up to 2**24 pixels per update and lose
    less than 1e-7 relative beyond, which is immaterial for a ratio.
    """

    def __init__(self, metric: str = "dice", averaging: str = "per_slice", threshold: float = 0.5,
                 name: str | None = None, **kwargs):
        _check_metric(metric)
        if averaging not in AVERAGINGS:
            raise ValueError(f"unknown averaging {averaging!r}; choose one of {AVERAGINGS}")
        name = name or (metric if averaging == "per_slice" else f"{metric}_pooled")
        kwargs["dtype"] = "float32"
        super().__init__(name=name, **kwargs)
        self.metric = metric
        self.averaging = averaging
        self.threshold = float(threshold)
        # sigmoid(x) >= t  <=>  x >= logit(t): no sigmoid needed per pixel.
        self._logit_threshold = math.log(self.threshold / (1.0 - self.threshold))
        zeros = keras.initializers.Zeros()
        if averaging == "pooled":
            self.tp = self.add_variable(shape=(), initializer=zeros, name="tp", dtype="float32")
            self.fp = self.add_variable(shape=(), initializer=zeros, name="fp", dtype="float32")
            self.fn = self.add_variable(shape=(), initializer=zeros, name="fn", dtype="float32")
        else:
            self.total = self.add_variable(shape=(), initializer=zeros, name="total", dtype="float32")
            self.count = self.add_variable(shape=(), initializer=zeros, name="count", dtype="float32")

    def _ratio(self, tp, fp, fn):
        num_fn, den_fn = RATIOS[self.metric]
        num, den = num_fn(tp, fp, fn), den_fn(tp, fp, fn)
        return ops.where(den > 0, num / ops.maximum(den, 1.0), 1.0)

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth = ops.cast(ops.cast(y_true, "float32") > 0.5, "float32")
        pred = ops.cast(ops.cast(y_pred, "float32") >= self._logit_threshold, "float32")
        batch = ops.shape(truth)[0]
        truth = ops.reshape(truth, (batch, -1))
        pred = ops.reshape(pred, (batch, -1))
        tp = ops.sum(pred * truth, axis=1)
        fp = ops.sum(pred, axis=1) - tp
        fn = ops.sum(truth, axis=1) - tp
        if self.averaging == "pooled":
            self.tp.assign_add(ops.sum(tp))
            self.fp.assign_add(ops.sum(fp))
            self.fn.assign_add(ops.sum(fn))
        else:
            self.total.assign_add(ops.sum(self._ratio(tp, fp, fn)))
            self.count.assign_add(ops.cast(batch, "float32"))

    def result(self):
        if self.averaging == "pooled":
            return self._ratio(self.tp, self.fp, self.fn)
        return ops.where(self.count > 0, self.total / ops.maximum(self.count, 1.0), 0.0)

    def reset_state(self):
        for variable in self.variables:
            variable.assign(ops.zeros_like(variable))

    def get_config(self):
        config = super().get_config()
        config.update(metric=self.metric, averaging=self.averaging, threshold=self.threshold)
        return config


def training_metrics(threshold: float = 0.5) -> list[SegmentationMetric]:
    """The metrics `tfunet-train` compiles: Dice in both averagings, the rest pooled."""
    return [
        SegmentationMetric("dice", "per_slice", threshold),
        SegmentationMetric("dice", "pooled", threshold),
        SegmentationMetric("jaccard", "pooled", threshold),
        SegmentationMetric("precision", "pooled", threshold),
        SegmentationMetric("recall", "pooled", threshold),
    ]
