"""Score a saved model on a split: the PyTorch original's table and the stricter figures beside it.

The original reports Dice, Jaccard, Precision, Recall and F1, each computed per slice and then
averaged over slices; an empty truth with an empty prediction counts as a perfect slice, so the
many tumour-free slices lift those numbers. Beside them this module reports what a reader of
the literature needs: Dice pooled over every pixel, Dice over tumour slices only, per-patient
3-D Dice (mean and median; Buda et al. 2019 report an 82% mean) and the share of tumour-free
slices in which any tumour is predicted. Every ratio comes from `tfunet.metrics`.

Predictions stream batch by batch; a slice is reduced to its mask at once, and only masks
wait for the rest of their patient (the largest-3-D-component step needs the whole volume).
Tuning keeps the validation split's probabilities, since each candidate is scored on them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from tfunet import metrics
from tfunet.console import progress_enabled
from tfunet.errors import TfunetError
from tfunet.fileio import write_json, write_text
from tfunet.postprocess import Settings, ValidationPatient, patient_mask, predict_with_flip, slice_masks

PRECISIONS = ("float32", "bfloat16")
# The summary keys a user may tune post-processing for (all: higher is better).
TUNE_METRICS = ("dice_pooled", "patient_dice_mean", "patient_dice_median", "dice", "dice_tumour_slices")
ORIGINAL_TABLE = (("Dice", "dice"), ("Jaccard", "jaccard"), ("Precision", "precision"),
                  ("Recall", "recall"), ("F1", "f1"))


# --- loading a model -----------------------------------------------------------------------------

@dataclasses.dataclass
class Scorer:
    """A saved model as a function: uint8 images (N, H, W, 3) at the model size -> float32
    probabilities (N, H, W, 1)."""

    path: Path
    meta: dict
    predict: Callable[[np.ndarray], np.ndarray]
    keras_model: object = None  # the Keras model when there is one (for the architecture figure)
    # An exported model applies the flip TTA its export chose (True/False) itself; None: .keras.
    builtin_tta: bool | None = None
    policy: str = "float32"  # the dtype policy the model computes in here

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.predict(np.asarray(images, np.uint8))


def load_scorer(path: str | Path, precision: str = "float32", jit_compile: bool = False,
                batch_size: int | None = None) -> Scorer:
    """Load a model for scoring, with its metadata.

    A `.keras` file gives the raw probabilities at the model size, leaving flip TTA to the
    caller (tuning compares both). precision "bfloat16" runs its layers in bfloat16 (logits
    stay float32); jit_compile compiles the forward pass with XLA, and with `batch_size` every
    call is padded to a multiple of it so XLA does not compile once per batch shape.
    A SavedModel folder or a `.tflite` file (from `tfunet-export`) goes through
    `tfunet.predict.load_predictor`, which applies the flip TTA its export chose.
    """
    path = Path(path)
    if precision not in PRECISIONS:
        raise TfunetError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if path.suffix != ".keras":
        if precision != "float32":
            raise TfunetError(f"--precision {precision} needs a .keras model; the precision of {path} "
                              f"was fixed at export")
        from tfunet import predict

        exported = predict.load_predictor(path)
        return Scorer(path, exported.meta, exported,
                         builtin_tta=bool(exported.meta["postprocess"]["tta_flip"]))
    from tfunet.loading import load_keras_model, rebuild_in_policy

    model, meta = load_keras_model(path)
    policy = "mixed_bfloat16" if precision == "bfloat16" else "float32"
    # A model trained in mixed precision is scored in float32 unless bfloat16 is asked for.
    model = rebuild_in_policy(model, meta, policy)
    return Scorer(path, meta, _keras_function(model, jit_compile, batch_size), keras_model=model,
                  policy=policy)


def _keras_function(model, jit_compile: bool, batch_size: int | None):
    import tensorflow as tf

    _, height, width, channels = model.input_shape

    @tf.function(jit_compile=jit_compile,
                 input_signature=[tf.TensorSpec([None, height, width, channels], tf.uint8)])
    def forward(images):
        return tf.sigmoid(model(tf.cast(images, tf.float32), training=False))

    def predict(images: np.ndarray) -> np.ndarray:
        n = len(images)
        padded = -(-n // batch_size) * batch_size if jit_compile and batch_size else n
        if padded > n:  # a multiple of batch_size: one XLA compilation per multiple used, not per n
            images = np.concatenate([images, np.zeros((padded - n, *images.shape[1:]), images.dtype)])
        return forward(images).numpy()[:n]

    return predict


# --- predicting a split, patient by patient ------------------------------------------------------

def predict_batches(scorer: Scorer, dataset, *, total: int, batch_size: int = 16,
                    tta: bool = False, progress: bool | None = None) -> Iterator[dict]:
    """Run the model over a dataset of slice dicts, batch by batch: dicts of patient_id (str list),
    slice, image (uint8), truth (bool), probs (float32, plain images) and probs_tta (float32,
    averaged with the mirror images, or None without `tta`)."""
    from tqdm.auto import tqdm

    from tfunet.data.pipeline import make_pipeline

    ds = make_pipeline(dataset, image_size=scorer.image_size, batch_size=batch_size,
                       with_metadata=True)
    with tqdm(total=total, unit="slice", desc="predicting", disable=not progress_enabled(progress)) as bar:
        for batch in ds.as_numpy_iterator():
            images = batch["image"]
            if tta:
                plain, averaged = predict_with_flip(scorer, images)
            else:
                plain, averaged = scorer(images), None
            yield {"patient_id": [p.decode() if isinstance(p, bytes) else str(p) for p in batch["patient_id"]],
                   "slice": batch["slice"], "image": images, "truth": batch["mask"] > 0,
                   "probs": plain, "probs_tta": averaged}
            bar.update(len(images))


def by_patient(items: Iterable[tuple[str, int, object]],
               slice_counts: dict[str, int]) -> Iterator[tuple[str, list]]:
    """Group (patient_id, slice number, item) triples, which may come with patients interleaved
    (sharded data is shuffled), into (patient_id, items sorted by slice number); a patient is
    yielded, and forgotten, as soon as all of its `slice_counts[id]` slices are in."""
    pending: dict[str, list] = {}
    for pid, number, item in items:
        parts = pending.setdefault(pid, [])
        parts.append((number, item))
        if len(parts) == slice_counts.get(pid, -1):
            yield pid, [item for _, item in sorted(pending.pop(pid), key=lambda part: part[0])]
    # Patients with fewer slices than announced (a source that skipped bad files) still count.
    for pid in sorted(pending):
        yield pid, [item for _, item in sorted(pending.pop(pid), key=lambda part: part[0])]


# --- scoring --------------------------------------------------------------------------------------

def summarize(tp, fp, fn, patient_ids) -> dict:
    """Every reported figure from per-slice counts (N,) and each slice's patient id.

    Figures that have no slice to average over (e.g. Dice over tumour slices of a split
    without tumour) are None.
    """
    tp, fp, fn = (np.asarray(c, np.int64) for c in (tp, fp, fn))
    if not len(tp):
        raise TfunetError("nothing to score: the split has no slices")
    has_tumour = (tp + fn) > 0
    predicted = (tp + fp) > 0
    out = metrics.scores_from_counts(tp, fp, fn)
    # The pixel F1 is the Dice by definition; it is listed because the original's table has it.
    out["f1"] = out["dice"]
    slice_dice = metrics.ratio_from_counts("dice", tp, fp, fn)
    out["dice_tumour_slices"] = float(slice_dice[has_tumour].mean()) if has_tumour.any() else None
    ids, ptp, pfp, pfn = metrics.counts_by_patient(patient_ids, tp, fp, fn)
    patient_dice = metrics.ratio_from_counts("dice", ptp, pfp, pfn)
    out["patient_dice_mean"] = float(np.mean(patient_dice))
    out["patient_dice_median"] = float(np.median(patient_dice))
    empty = ~has_tumour
    out["empty_slices_with_prediction"] = float(predicted[empty].mean()) if empty.any() else None
    out.update(num_slices=int(len(tp)), num_tumour_slices=int(has_tumour.sum()),
               num_empty_slices_with_prediction=int((predicted & empty).sum()),
               num_patients=int(len(ids)))
    _, num_slices = np.unique(np.asarray(patient_ids), return_counts=True)  # same order as ids
    out["patients"] = {pid: {"dice_3d": float(d), "slices": int(k), "truth_pixels": int(t + n),
                             "predicted_pixels": int(t + f)}
                       for pid, d, k, t, f, n in zip(ids.tolist(), patient_dice, num_slices, ptp, pfp, pfn)}
    return out


def score_masks(masks, truths, patient_ids) -> dict:
    """`summarize` of per-patient mask and truth volumes (lists in the same order)."""
    counts = [metrics.confusion_counts(m, t) for m, t in zip(masks, truths)]
    ids = np.concatenate([[pid] * len(m) for pid, m in zip(patient_ids, masks)])
    return summarize(*(np.concatenate(c) for c in zip(*counts)), ids)


def objective(metric: str) -> Callable[[list, list], float]:
    """A tuning objective for `tfunet.postprocess.tune`: the summary figure `metric`."""
    if metric not in TUNE_METRICS:
        raise TfunetError(f"cannot tune for {metric!r}; choose one of {', '.join(TUNE_METRICS)}")

    def measure(masks, truths) -> float:
        value = score_masks(masks, truths, [str(i) for i in range(len(masks))])[metric]
        return -1.0 if value is None else value

    return measure


@dataclasses.dataclass
class Evaluation:
    model: str
    dataset: str
    split: str
    settings: Settings
    summary: dict
    samples: list = dataclasses.field(default_factory=list)  # dicts for the sample figures
    tuning: dict | None = None
    policy: str = "float32"  # what scoring computed in
    trained_policy: str | None = None  # what training computed in (None: not recorded)

    def describe_policy(self) -> str:
        return f"scored in {self.policy}, trained in {self.trained_policy or 'an unrecorded policy'}"

    def to_json(self) -> dict:
        return {"model": self.model, "dataset": self.dataset, "split": self.split,
                "policy": self.policy, "trained_policy": self.trained_policy,
                "settings": dataclasses.asdict(self.settings), "metrics": {
                    k: v for k, v in self.summary.items() if k != "patients"},
                "patients": self.summary["patients"], "tuning": self.tuning}


def evaluate(scorer: Scorer, splits, split: str = "test", settings: Settings | None = None, *,
             dataset_name: str = "", batch_size: int = 16, num_samples: int = 0, seed: int = 42,
             progress: bool | None = None) -> Evaluation:
    """Score `scorer` on one split of `splits` (a `tfunet.data.sources.DataSplits`).

    settings: threshold and post-processing (default: the model's metadata).
    num_samples: keep that many seeded random slices (image, truth, prediction) for figures.
    Only each slice's mask and truth wait for the rest of their patient (for the 3-D step).
    """
    settings = settings or Settings.from_metadata(scorer.meta)
    if scorer.builtin_tta is not None and settings.tta_flip != scorer.builtin_tta:
        raise TfunetError(f"{scorer.path} was exported with flip TTA "
                          f"{'on' if scorer.builtin_tta else 'off'}; re-export it to change that")
    counts = _slice_counts(splits, split)
    total = sum(counts.values())
    picks = set(np.random.default_rng(seed).choice(total, size=min(num_samples, total),
                                                   replace=False).tolist()) if num_samples else set()

    def slices():
        position = 0
        for batch in predict_batches(scorer, splits.dataset(split), total=total, batch_size=batch_size,
                                     tta=settings.tta_flip and scorer.builtin_tta is None,
                                     progress=progress):
            probs = batch["probs_tta"] if batch["probs_tta"] is not None else batch["probs"]
            masks = slice_masks(probs, settings)
            for i, pid in enumerate(batch["patient_id"]):
                number = int(batch["slice"][i])
                image = batch["image"][i] if position in picks else None
                yield pid, number, (masks[i], batch["truth"][i], image, number)
                position += 1

    slice_counts, ids, samples = [], [], []
    for pid, items in by_patient(slices(), counts):
        masks, truths, images, numbers = zip(*items)
        mask, truth = patient_mask(np.stack(masks), settings), np.stack(truths)
        slice_counts.append(metrics.confusion_counts(mask, truth))
        ids += [pid] * len(mask)
        samples += [{"image": image, "truth": truth[i, ..., 0], "prediction": mask[i, ..., 0],
                     "patient_id": pid, "slice": numbers[i]}
                    for i, image in enumerate(images) if image is not None]
    summary = summarize(*(np.concatenate(c) for c in zip(*slice_counts)), ids)
    return Evaluation(str(scorer.path), dataset_name, split, settings, summary, samples,
                      policy=scorer.policy, trained_policy=scorer.meta.get("policy"))


def collect_validation(scorer: Scorer, splits, *, batch_size: int = 16, tta: bool = True,
                       progress: bool | None = None) -> list[ValidationPatient]:
    """The validation split's truths and probabilities (with flip TTA too when `tta`), for tuning."""
    if scorer.builtin_tta is not None:
        raise TfunetError(f"{scorer.path} is an exported model, whose settings are fixed at export: "
                          f"tune the .keras model it came from, then export it again")
    counts = _slice_counts(splits, "val")

    def slices():
        for batch in predict_batches(scorer, splits.dataset("val"), total=sum(counts.values()),
                                     batch_size=batch_size, tta=tta, progress=progress):
            for i, pid in enumerate(batch["patient_id"]):
                tta_probs = None if batch["probs_tta"] is None else batch["probs_tta"][i]
                yield pid, int(batch["slice"][i]), (batch["truth"][i], batch["probs"][i], tta_probs)

    patients = []
    for _, items in by_patient(slices(), counts):
        truth, probs, probs_tta = zip(*items)
        patients.append(ValidationPatient(np.stack(truth), np.stack(probs),
                                          None if probs_tta[0] is None else np.stack(probs_tta)))
    return patients


def _slice_counts(splits, split: str) -> dict[str, int]:
    counts = splits.source.patients()
    patients = splits.patients(split)
    if not patients:
        raise TfunetError(f"split {split!r} has no patients")
    return {pid: counts[pid] for pid in patients}


# --- reports --------------------------------------------------------------------------------------

def _fmt(value, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}%" if percent else f"{value:.4f}"


def to_markdown(ev: Evaluation) -> str:
    s = ev.summary
    lines = [f"# tfunet evaluation: {ev.split} split", "",
             f"Model `{ev.model}`, dataset {ev.dataset or 'n/a'}: {s['num_slices']} slices of "
             f"{s['num_patients']} patients, {s['num_tumour_slices']} with tumour. "
             f"Post-processing: {ev.settings.describe()}. Dtype policy: {ev.describe_policy()}.", "",
             "## The PyTorch original's table (each figure per slice, then averaged)", "",
             "| Metric | Value |", "| --- | --- |"]
    lines += [f"| {label} | {_fmt(s[key])} |" for label, key in ORIGINAL_TABLE]
    lines += ["", "An empty truth with an empty prediction counts as a perfect slice (1.0) here.", "",
              "## Stricter figures", "", "| Figure | Value |", "| --- | --- |",
              f"| Dice pooled over all pixels | {_fmt(s['dice_pooled'])} |",
              f"| Dice over tumour slices only ({s['num_tumour_slices']} slices) | "
              f"{_fmt(s['dice_tumour_slices'])} |",
              f"| Per-patient 3-D Dice, mean (Buda et al. 2019: 82%) | {_fmt(s['patient_dice_mean'])} |",
              f"| Per-patient 3-D Dice, median | {_fmt(s['patient_dice_median'])} |",
              f"| Tumour-free slices with any predicted tumour | "
              f"{_fmt(s['empty_slices_with_prediction'], percent=True)} "
              f"({s['num_empty_slices_with_prediction']} of {s['num_slices'] - s['num_tumour_slices']}) |",
              "", "## Per patient", "", "| Patient | Slices | Truth pixels | Predicted pixels | 3-D Dice |",
              "| --- | --- | --- | --- | --- |"]
    lines += [f"| {pid} | {p['slices']} | {p['truth_pixels']} | {p['predicted_pixels']} | {_fmt(p['dice_3d'])} |"
              for pid, p in s["patients"].items()]
    if ev.tuning:
        lines += ["", f"## Tuning on the validation split (objective: {ev.tuning['objective']})", "",
                  "| Step | Chosen | Candidates (validation score) |", "| --- | --- | --- |"]
        lines += [f"| {step['step']} | {step['chosen']} | "
                  + ", ".join(f"{c['value']}: {_fmt(c['score'])}" for c in step["scores"]) + " |"
                  for step in ev.tuning["steps"]]
    return "\n".join(lines) + "\n"


def print_table(ev: Evaluation) -> str:
    """The console summary: the original's table, then the stricter figures."""
    s = ev.summary
    rows = [(label, _fmt(s[key])) for label, key in ORIGINAL_TABLE] + [
        ("Dice pooled", _fmt(s["dice_pooled"])),
        ("Dice, tumour slices", _fmt(s["dice_tumour_slices"])),
        ("Patient 3-D Dice mean", _fmt(s["patient_dice_mean"])),
        ("Patient 3-D Dice median", _fmt(s["patient_dice_median"])),
        ("Empty slices w/ prediction", _fmt(s["empty_slices_with_prediction"], percent=True)),
    ]
    width = max(len(label) for label, _ in rows)
    head = (f"{ev.split}: {s['num_slices']} slices, {s['num_patients']} patients "
            f"({ev.settings.describe()}; {ev.describe_policy()})")
    return "\n".join([head] + [f"  {label:<{width}}  {value}" for label, value in rows])


def write_reports(ev: Evaluation, log_dir: str | Path) -> tuple[Path, Path]:
    """`<split>_metrics.json` and `<split>_metrics.md` in `log_dir`, each written atomically."""
    log_dir = Path(log_dir)
    json_path, md_path = log_dir / f"{ev.split}_metrics.json", log_dir / f"{ev.split}_metrics.md"
    write_json(json_path, ev.to_json())
    write_text(md_path, to_markdown(ev))
    return json_path, md_path
