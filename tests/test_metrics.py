import numpy as np
import pytest

from tfunet import metrics
from tfunet.metrics import SegmentationMetric

E = np.zeros((4, 4), np.uint8)  # empty slice


def _slice(*pixels):
    s = np.zeros((4, 4), np.uint8)
    for r, c in pixels:
        s[r, c] = 1
    return s


A = _slice((0, 0), (0, 1), (1, 0), (1, 1))  # 4 pixels
B = _slice((0, 0), (0, 1))  # 2 pixels, inside A
C = _slice((3, 3))  # 1 pixel, disjoint from A

# pred, truth, metric, averaging, expected (hand-computed)
CASES = [
    ([A], [A], "dice", "per_slice", 1.0),                     # perfect
    ([E], [E], "dice", "per_slice", 1.0),                     # empty/empty counts 1
    ([E], [E], "jaccard", "pooled", 1.0),
    ([E], [A], "dice", "per_slice", 0.0),                     # missed tumour
    ([C], [E], "dice", "per_slice", 0.0),                     # false alarm on an empty slice
    ([E], [A], "precision", "per_slice", 1.0),                # nothing predicted: no false positive
    ([E], [A], "recall", "per_slice", 0.0),
    ([C], [E], "recall", "per_slice", 1.0),                   # nothing to find
    ([C], [E], "precision", "per_slice", 0.0),
    ([B], [A], "dice", "per_slice", 2 * 2 / (2 + 4)),         # partial: TP 2, FN 2
    ([B], [A], "jaccard", "per_slice", 2 / 4),
    ([B], [A], "precision", "per_slice", 1.0),
    ([B], [A], "recall", "per_slice", 0.5),
    ([A], [B], "precision", "per_slice", 0.5),
    # two slices: (partial, empty/empty) -> per-slice mean vs pooled
    ([B, E], [A, E], "dice", "per_slice", (2 / 3 + 1.0) / 2),
    ([B, E], [A, E], "dice", "pooled", 2 / 3),
    # a false alarm on an empty slice costs the pooled score only through its FP pixels
    ([A, C], [A, E], "dice", "per_slice", 0.5),
    ([A, C], [A, E], "dice", "pooled", 8 / 9),
    ([A, C], [A, E], "precision", "pooled", 4 / 5),
    ([A | C, E], [A, C], "jaccard", "pooled", 4 / 6),       # TP 4, FP 1, FN 1
]


@pytest.mark.parametrize("pred, truth, metric, averaging, expected", CASES)
def test_numpy_metric_hand_computed(pred, truth, metric, averaging, expected):
    assert metrics.score(metric, np.stack(pred), np.stack(truth), averaging) == pytest.approx(expected)


@pytest.mark.parametrize("pred, truth, metric, averaging, expected", CASES)
def test_keras_metric_matches_numpy(pred, truth, metric, averaging, expected):
    truth = np.stack(truth)[..., None].astype(np.float32)
    logits = np.where(np.stack(pred)[..., None] > 0, 5.0, -5.0).astype(np.float32)
    m = SegmentationMetric(metric, averaging)
    m.update_state(truth, logits)
    assert float(m.result()) == pytest.approx(expected, abs=1e-6)


def test_keras_metric_accumulates_over_batches_like_numpy():
    rng = np.random.default_rng(0)
    truth = (rng.random((10, 16, 16, 1)) < 0.2).astype(np.float32)
    truth[:4] = 0  # some empty slices
    logits = rng.normal(0, 2, truth.shape).astype(np.float32)
    pred = logits >= 0
    for metric in metrics.METRICS:
        for averaging in metrics.AVERAGINGS:
            m = SegmentationMetric(metric, averaging)
            for start in range(0, 10, 3):  # uneven batches
                m.update_state(truth[start:start + 3], logits[start:start + 3])
            expected = metrics.score(metric, pred, truth, averaging)
            assert float(m.result()) == pytest.approx(expected, abs=1e-5), (metric, averaging)


@pytest.mark.parametrize("threshold, expected", [(0.5, 1.0), (0.9, 0.0)])
def test_keras_metric_threshold_applies_to_probabilities(threshold, expected):
    truth = np.ones((1, 2, 2, 1), np.float32)
    logits = np.full(truth.shape, 1.0, np.float32)  # p = 0.73
    m = SegmentationMetric("recall", "pooled", threshold=threshold)
    m.update_state(truth, logits)
    assert float(m.result()) == pytest.approx(expected)


def test_all_scores_keys_and_f1_equals_dice():
    pred = np.stack([B, E])
    truth = np.stack([A, E])
    scores = metrics.all_scores(pred, truth)
    assert set(scores) == {f"{m}{s}" for m in metrics.METRICS for s in ("", "_pooled")}
    tp, fp, fn = metrics.confusion_counts(pred, truth)
    precision, recall = metrics.ratio_from_counts("precision", tp, fp, fn), metrics.ratio_from_counts("recall", tp, fp, fn)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    assert scores["dice"] == pytest.approx(float(np.mean(f1)))


def test_metric_reset_and_config_round_trip():
    m = SegmentationMetric("jaccard", "pooled", threshold=0.3)
    m.update_state(np.ones((1, 2, 2, 1)), np.full((1, 2, 2, 1), -5.0))
    assert float(m.result()) == 0.0
    m.reset_state()
    assert float(m.result()) == 1.0  # nothing seen: 0/0 counts 1
    clone = SegmentationMetric.from_config(m.get_config())
    assert (clone.metric, clone.averaging, clone.threshold, clone.name) == ("jaccard", "pooled", 0.3, "jaccard_pooled")


@pytest.mark.parametrize("kwargs", [dict(metric="f2"), dict(averaging="macro")])
def test_unknown_metric_or_averaging_is_rejected(kwargs):
    with pytest.raises(ValueError):
        SegmentationMetric(**kwargs)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="does not match"):
        metrics.confusion_counts(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
