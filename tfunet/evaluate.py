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
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from tfunet import metrics
from tfunet.console import progress_enabled
from tfunet.errors import TfunetError
from tfunet.fileio import write_json, write_text
from tfunet.postprocess import TUNE_METRICS, Settings, ValidationPatient, flip_average, patient_mask, slice_masks
from tfunet.predictor import ModelRunner

ORIGINAL_TABLE = (("Dice", "dice"), ("Jaccard", "jaccard"), ("Precision", "precision"),
                  ("Recall", "recall"), ("F1", "f1"))


# --- predicting a split, patient by patient ------------------------------------------------------

def predict_batches(runner: ModelRunner, dataset, *, total: int, batch_size: int = 16,
                    tta: bool = False, progress: bool | None = None) -> Iterator[dict]:
    """Run the model over a dataset of slice dicts, batch by batch: dicts of patient_id (str list),
    slice, image (uint8), truth (bool), probs (float32, plain images) and probs_tta (float32,
    averaged with the mirror images, or None without `tta`)."""
    from tqdm.auto import tqdm

    from tfunet.data.pipeline import make_pipeline

    ds = make_pipeline(dataset, image_size=runner.image_size, batch_size=batch_size,
                       with_metadata=True)
    with tqdm(total=total, unit="slice", desc="predicting", disable=not progress_enabled(progress)) as bar:
        for batch in ds.as_numpy_iterator():
            images = batch["image"]
            if tta:
                plain, averaged = flip_average(runner.raw, images)
            else:
                plain, averaged = runner.raw(images), None
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
    written: list = dataclasses.field(default_factory=list)  # files evaluate_model wrote

    def describe_policy(self) -> str:
        return f"scored in {self.policy}, trained in {self.trained_policy or 'an unrecorded policy'}"

    def to_json(self) -> dict:
        return {"model": self.model, "dataset": self.dataset, "split": self.split,
                "policy": self.policy, "trained_policy": self.trained_policy,
                "settings": dataclasses.asdict(self.settings), "metrics": {
                    k: v for k, v in self.summary.items() if k != "patients"},
                "patients": self.summary["patients"], "tuning": self.tuning}


def evaluate(runner: ModelRunner, splits, split: str = "test", settings: Settings | None = None, *,
             dataset_name: str = "", batch_size: int = 16, num_samples: int = 0, seed: int = 42,
             progress: bool | None = None) -> Evaluation:
    """Score `runner` (e.g. a `tfunet.predictor.Predictor`) on one split of `splits` (a `tfunet.data.sources.DataSplits`).

    settings: threshold and post-processing (default: the model's metadata).
    num_samples: keep that many seeded random slices (image, truth, prediction) for figures.
    Only each slice's mask and truth wait for the rest of their patient (for the 3-D step).
    """
    settings = settings or Settings.from_metadata(runner.meta)
    if runner.builtin_tta is not None and settings.tta_flip != runner.builtin_tta:
        raise TfunetError(f"{runner.path} was exported with flip TTA "
                          f"{'on' if runner.builtin_tta else 'off'}; re-export it to change that")
    counts = _slice_counts(splits, split)
    total = sum(counts.values())
    picks = set(np.random.default_rng(seed).choice(total, size=min(num_samples, total),
                                                   replace=False).tolist()) if num_samples else set()

    def slices():
        position = 0
        for batch in predict_batches(runner, splits.dataset(split), total=total, batch_size=batch_size,
                                     tta=settings.tta_flip and runner.builtin_tta is None,
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
    return Evaluation(str(runner.path), dataset_name, split, settings, summary, samples,
                      policy=runner.policy, trained_policy=runner.meta.get("policy"))


def collect_validation(runner: ModelRunner, splits, *, batch_size: int = 16, tta: bool = True,
                       progress: bool | None = None, split: str = "val") -> list[ValidationPatient]:
    """A split's truths and probabilities (with flip TTA too when `tta`) per patient, for tuning
    (the validation split) or for cross-validation (a held-out fold)."""
    if runner.builtin_tta is not None:
        raise TfunetError(f"{runner.path} is an exported model, whose settings are fixed at export: "
                          f"tune the .keras model it came from, then export it again")
    counts = _slice_counts(splits, split)

    def slices():
        for batch in predict_batches(runner, splits.dataset(split), total=sum(counts.values()),
                                     batch_size=batch_size, tta=tta, progress=progress):
            for i, pid in enumerate(batch["patient_id"]):
                tta_probs = None if batch["probs_tta"] is None else batch["probs_tta"][i]
                yield pid, int(batch["slice"][i]), (batch["truth"][i], batch["probs"][i], tta_probs)

    patients = []
    for pid, items in by_patient(slices(), counts):
        truth, probs, probs_tta = zip(*items)
        patients.append(ValidationPatient(np.stack(truth), np.stack(probs),
                                          None if probs_tta[0] is None else np.stack(probs_tta), pid))
    return patients


def _slice_counts(splits, split: str) -> dict[str, int]:
    counts = splits.source.patients()
    patients = splits.patients(split)
    if not patients:
        hint = ""
        if split == "test" and not splits.split["val"] and splits.split["train"]:
            hint = (" (a K-fold ensemble trained on every patient of its folds: score other patients "
                    "with --data-dir FOLDER --split all)")
        raise TfunetError(f"split {split!r} has no patients{hint}")
    return {pid: counts[pid] for pid in patients}


# --- reports --------------------------------------------------------------------------------------

def format_figure(value, percent: bool = False) -> str:
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
    lines += [f"| {label} | {format_figure(s[key])} |" for label, key in ORIGINAL_TABLE]
    lines += ["", "An empty truth with an empty prediction counts as a perfect slice (1.0) here.", "",
              "## Stricter figures", "", "| Figure | Value |", "| --- | --- |",
              f"| Dice pooled over all pixels | {format_figure(s['dice_pooled'])} |",
              f"| Dice over tumour slices only ({s['num_tumour_slices']} slices) | "
              f"{format_figure(s['dice_tumour_slices'])} |",
              f"| Per-patient 3-D Dice, mean (Buda et al. 2019: 82%) | {format_figure(s['patient_dice_mean'])} |",
              f"| Per-patient 3-D Dice, median | {format_figure(s['patient_dice_median'])} |",
              f"| Tumour-free slices with any predicted tumour | "
              f"{format_figure(s['empty_slices_with_prediction'], percent=True)} "
              f"({s['num_empty_slices_with_prediction']} of {s['num_slices'] - s['num_tumour_slices']}) |",
              "", "## Per patient", "", "| Patient | Slices | Truth pixels | Predicted pixels | 3-D Dice |",
              "| --- | --- | --- | --- | --- |"]
    lines += [f"| {pid} | {p['slices']} | {p['truth_pixels']} | {p['predicted_pixels']} | {format_figure(p['dice_3d'])} |"
              for pid, p in s["patients"].items()]
    if ev.tuning:
        lines += ["", f"## Tuning on the validation split (objective: {ev.tuning['objective']})", "",
                  "| Step | Chosen | Candidates (validation score) |", "| --- | --- | --- |"]
        lines += [f"| {step['step']} | {step['chosen']} | "
                  + ", ".join(f"{c['value']}: {format_figure(c['score'])}" for c in step["scores"]) + " |"
                  for step in ev.tuning["steps"]]
    return "\n".join(lines) + "\n"


def format_table(ev: Evaluation) -> str:
    """The console summary: the original's table, then the stricter figures."""
    s = ev.summary
    rows = [(label, format_figure(s[key])) for label, key in ORIGINAL_TABLE] + [
        ("Dice pooled", format_figure(s["dice_pooled"])),
        ("Dice, tumour slices", format_figure(s["dice_tumour_slices"])),
        ("Patient 3-D Dice mean", format_figure(s["patient_dice_mean"])),
        ("Patient 3-D Dice median", format_figure(s["patient_dice_median"])),
        ("Empty slices w/ prediction", format_figure(s["empty_slices_with_prediction"], percent=True)),
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


# --- the whole evaluation, as tfunet-evaluate runs it ---------------------------------------------

TUNE_CHOICES = ("all", "threshold")  # tfunet-evaluate --tune / --tune-threshold


def evaluate_model(model, *, split: str = "test", dataset: str | None = None,
                   data_dir: str | None = None, cache_dir: str | None = None, split_file: str | None = None,
                   batch_size: int | None = None, settings: dict | None = None, tune: str | None = None,
                   tune_metric: str = "dice_pooled", num_samples: int = 3, seed: int | None = None,
                   loss_curves: bool = False, architecture: bool = True, mixed_precision: str = "off",
                   jit_compile: str = "auto", log_dir: str | Path = "logs",
                   progress: bool | None = None) -> Evaluation:
    """Score a saved model on a split, write its reports and figures to `log_dir`, and return
    the `Evaluation` (its `written` lists the files).

    model: a .keras file, a SavedModel folder, a .tflite file, or an ensemble (several .keras
        files, or a K-fold run's saved_models/ folder; their probabilities are averaged).

    Dataset, data folder, split and post-processing default to the model's metadata.
    settings: post-processing overrides for this run (keys of `tfunet.postprocess.Settings`).
    tune: "all" measures every post-processing step on the validation split, "threshold" the
        threshold alone; the choice is written to the model's metadata, then `split` is scored
        with it.
    mixed_precision, jit_compile: how a .keras model computes (see `load_predictor`).
    """
    from tfunet import plots
    from tfunet.data.sources import config_for_model, splits_for_model
    from tfunet.loading import model_metadata
    from tfunet.metadata import update_metadata
    from tfunet.postprocess import TUNE_STEPS
    from tfunet.postprocess import tune as tune_settings
    from tfunet.predictor import load_predictor
    from tfunet.runtime import use_jit

    settings = {k: v for k, v in (settings or {}).items() if v is not None}
    if tune not in (None, *TUNE_CHOICES):
        raise TfunetError(f"tune must be one of {', '.join(TUNE_CHOICES)}, got {tune!r}")
    if "threshold" in settings and tune:
        raise TfunetError("--threshold and --tune/--tune-threshold both set the threshold; pass one")
    if tune == "all" and settings:
        raise TfunetError("--tune chooses every post-processing setting; drop --min-component-pixels, "
                          "--[no-]largest-3d-component and --[no-]tta, or use --tune-threshold")
    measure = objective(tune_metric) if tune else None  # checks the metric before any work
    if num_samples < 0:
        raise TfunetError(f"--num-samples must be >= 0, got {num_samples}")
    if batch_size is not None and batch_size < 1:
        raise TfunetError(f"--batch-size must be at least 1, got {batch_size}")
    several = not isinstance(model, (str, Path)) and len(model) > 1
    if several and tune:
        raise TfunetError("--tune writes the chosen settings to the model's metadata: tune one model, or a "
                          "K-fold run's saved_models/ folder (whose tfunet.json holds the ensemble's)")
    model_path = Path(model) if isinstance(model, (str, Path)) else Path(model[0])
    meta = model_metadata(model)
    config = config_for_model(meta, dataset=dataset, data_dir=data_dir, cache_dir=cache_dir,
                              split_file=split_file, batch_size=batch_size, seed=seed, jit_compile=jit_compile)
    chosen = dataclasses.replace(Settings.from_metadata(meta), **settings)  # checks values before any work
    log_dir = Path(log_dir)
    train_log = _train_log(log_dir, config) if loss_curves else None
    predictor = load_predictor(model, mixed_precision=mixed_precision, jit_compile=use_jit(config),
                               batch_size=config.batch_size)
    splits = splits_for_model(config, meta, need_split=bool(tune) or split != "all")

    tuning_report = None
    if tune:
        steps = TUNE_STEPS if tune == "all" else ("threshold",)
        print(f"tfunet-evaluate: tuning {', '.join(steps)} on {splits.num_slices('val')} validation slices "
              f"for {tune_metric}", file=sys.stderr)
        val = collect_validation(predictor, splits, batch_size=config.batch_size, tta="tta_flip" in steps,
                                 progress=progress)
        chosen, steps_report = tune_settings(val, measure, steps=steps,
                                             start=Settings() if tune == "all" else chosen)
        tuning_report = {"objective": tune_metric, "split": "val", "steps": steps_report}
        update_metadata(model_path, **chosen.to_metadata(), tuning=tuning_report)
        for step in steps_report:
            scores = ", ".join(f"{c['value']}: {c['score']:.4f}" for c in step["scores"])
            print(f"  {step['step']}: chose {step['chosen']} (val {tune_metric} {scores})")
        print(f"tfunet-evaluate: wrote the chosen settings ({chosen.describe()}) to the metadata of "
              f"{model_path}")
        if split == "val":
            print("tfunet-evaluate: note: scoring the split the settings were tuned on overstates them",
                  file=sys.stderr)

    result = evaluate(predictor, splits, split, chosen, dataset_name=config.dataset,
                      batch_size=config.batch_size, num_samples=num_samples, seed=config.seed,
                      progress=progress)
    result.tuning = tuning_report
    result.written = list(write_reports(result, log_dir))
    for i, sample in enumerate(result.samples, start=1):
        slice_dice = metrics.dice(sample["prediction"][None], sample["truth"][None])
        title = f"{sample['patient_id']}, slice {sample['slice']}: Dice {slice_dice:.3f}"
        result.written.append(plots.plot_sample(sample["image"], sample["truth"], sample["prediction"],
                                                log_dir / f"sample_{i}.png", title))
    if architecture:
        if predictor.keras_model is None:
            print("tfunet-evaluate: note: model_architecture.png needs a .keras model", file=sys.stderr)
        else:
            drawn = plots.plot_architecture(predictor.keras_model, log_dir / "model_architecture.png")
            if drawn:
                result.written.append(drawn)
            else:
                print(f"tfunet-evaluate: note: {plots.ARCHITECTURE_HELP}", file=sys.stderr)
    if loss_curves:
        result.written.append(plots.plot_loss_curves(train_log, log_dir / "loss_curves.png"))
    return result


def _train_log(log_dir: Path, config) -> Path:
    """train_log.csv of the log folder, else of the training run the metadata names."""
    for candidate in (log_dir / "train_log.csv", config.log_dir / "train_log.csv"):
        if candidate.is_file():
            return candidate
    raise TfunetError(f"--loss-curves: no train_log.csv in {log_dir} or {config.log_dir}")
