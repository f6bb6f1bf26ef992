"""K-fold cross-validation by patient, and the fold ensemble it leaves behind.

`tfunet-train --folds K` deals the patients into K folds balanced by tumour burden
(`tfunet.data.split.make_folds`), writes them to logs/split.json (a split file that
`--split-file` reads back), then trains one model per fold on the other K-1 folds.

Nothing is chosen on a held-out fold inside its own fold: each fold keeps its last epoch, as
nnU-Net does. The held-out fold is still scored after every epoch, so the curves show how
training went, but no checkpoint follows it; the other choice, an inner validation split,
would take a further share of the few patients from training.

After training, each fold predicts its held-out patients (plain and horizontally flipped):
these out-of-fold probabilities are kept in logs/fold_<k>/oof_probabilities.npz. From them:
  * the CV report, logs/cv_metrics.json and .md: per fold, and as mean +- sd over folds;
  * post-processing chosen the nnU-Net way: a step is adopted only if it raises the mean
    per-patient 3-D Dice over all out-of-fold patients (`tfunet.postprocess.tune`). Scored on
    the patients it was chosen on, that is optimistic, so the report also scores each fold
    under the choice made on the other folds alone (`cross_fitted`);
  * the ensemble's metadata, saved_models/tfunet.json: the members, the split, and the chosen
    post-processing with its evidence. Every command that takes `--model` takes the
    saved_models/ folder as the ensemble of its folds (`tfunet.loading.find_members`).

A killed run resumes: a fold with its out-of-fold file is done; a fold that was training
continues from its backup at the epoch it reached (`tfunet.resume`). The report's wall time
counts every process that worked on the run, up to the last epoch each finished
(logs/wall_seconds.json).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from tfunet.data.sources import DataSplits, make_source, tumour_burden
from tfunet.data.split import make_folds, read_split_file, validate_folds, validate_split, write_split
from tfunet.errors import TfunetError
from tfunet.fileio import atomic_path, write_json, write_text
from tfunet.postprocess import TUNE_STEPS, Settings, ValidationPatient, to_mask
from tfunet.resume import WALL_FILE, WallClock, backed_up_epoch, backup_dir

OOF_FILE = "oof_probabilities.npz"
OBJECTIVE = "patient_dice_mean"
# The figures of the CV report: (key, label, higher is better).
FIGURES = (("patient_dice_mean", "per-patient 3-D Dice, mean"),
           ("patient_dice_median", "per-patient 3-D Dice, median"),
           ("dice_tumour_slices", "Dice on tumour slices"),
           ("dice_pooled", "pooled Dice"),
           ("empty_slices_with_prediction", "empty slices with a false positive"),
           ("missed_patients", "tumour patients missed entirely"))


def fold_name(k: int) -> str:
    return f"fold_{k}"


def wants_folds(config) -> bool:
    """Whether `config` asks for cross-validation: --folds, or a split file that holds folds."""
    if config.folds:
        return True
    return bool(config.split_file) and "folds" in read_split_file(config.split_file)


# --- the folds ------------------------------------------------------------------------------------

def plan_folds(config, source) -> dict:
    """The K-fold split file's content: {"folds", "test", "tumour_pixels"}.

    From config.split_file when it holds folds; otherwise the patients a {train, val, test}
    split file trains on (its test patients stay out of every fold), or every patient, dealt
    into config.folds folds by tumour burden."""
    ids = sorted(source.patients())
    test: list[str] = []
    pool = ids
    if config.split_file:
        raw = read_split_file(config.split_file)
        if "folds" in raw:
            folds = validate_folds(raw, ids)
            if config.folds and config.folds != len(folds):
                raise TfunetError(f"--folds {config.folds} disagrees with the {len(folds)} folds of "
                                  f"{config.split_file}; drop --folds or the split file")
            used = [p for fold in folds for p in fold]
            return {"folds": folds, "test": sorted(raw.get("test") or []),
                    "tumour_pixels": tumour_burden(source, used)}
        split = validate_split(raw, ids)
        pool, test = sorted(split["train"] + split["val"]), sorted(split["test"])
    burden = tumour_burden(source, pool)
    return {"folds": make_folds(burden, config.folds, config.seed), "test": test, "tumour_pixels": burden}


def fold_splits(source, plan: dict, k: int) -> DataSplits:
    """Fold k's data: the other folds train, fold k is held out (as "val": curves only)."""
    train = sorted(p for j, fold in enumerate(plan["folds"]) if j != k for p in fold)
    return DataSplits(source, {"train": train, "val": list(plan["folds"][k]), "test": list(plan["test"])})


# --- out-of-fold probabilities ---------------------------------------------------------------------

def save_oof(patients: list[ValidationPatient], path: Path) -> None:
    """Out-of-fold truths and probabilities (float16: ample for thresholds 0.05 apart), atomically."""
    arrays = {}
    for p in patients:
        arrays[f"{p.patient_id}/truth"] = p.truth.astype(bool)
        arrays[f"{p.patient_id}/probs"] = p.probs.astype(np.float16)
        arrays[f"{p.patient_id}/probs_tta"] = p.probs_tta.astype(np.float16)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def load_oof(path: Path) -> list[ValidationPatient]:
    with np.load(path) as data:
        ids = sorted({key.rsplit("/", 1)[0] for key in data.files})
        return [ValidationPatient(data[f"{pid}/truth"], data[f"{pid}/probs"].astype(np.float32),
                                  data[f"{pid}/probs_tta"].astype(np.float32), pid) for pid in ids]


def predict_out_of_fold(model_path: Path, splits: DataSplits, config) -> list[ValidationPatient]:
    """The held-out fold's probabilities from the fold's model, plain and flip-averaged, in float32."""
    from tfunet.evaluate import collect_validation
    from tfunet.predictor import load_predictor

    predictor = load_predictor(model_path)
    return collect_validation(predictor, splits, batch_size=config.batch_size, tta=True, split="val")


# --- the report -----------------------------------------------------------------------------------

def score_patients(patients: list[ValidationPatient], settings: Settings | list[Settings]) -> dict:
    """The CV figures of these patients' masks under `settings` (one for all, or one per patient)."""
    from tfunet.evaluate import score_masks

    each = settings if isinstance(settings, list) else [settings] * len(patients)
    masks = [to_mask(p.probs_tta if s.tta_flip else p.probs, s) for p, s in zip(patients, each)]
    summary = score_masks(masks, [p.truth for p in patients], [p.patient_id for p in patients])
    summary["missed_patients"] = sum(1 for p in summary["patients"].values()
                                     if p["truth_pixels"] > 0 and p["dice_3d"] == 0.0)
    return summary


def summarize_folds(per_fold: list[list[ValidationPatient]], settings: Settings | list[Settings]) -> dict:
    """Per fold, mean and sd over folds (sd with K-1), and every out-of-fold patient at once;
    `settings` is one for every fold, or one per fold."""
    by_fold = settings if isinstance(settings, list) else [settings] * len(per_fold)
    folds = [score_patients(patients, s) for patients, s in zip(per_fold, by_fold)]
    table = {"folds": [], "mean": {}, "sd": {}}
    for k, summary in enumerate(folds):
        table["folds"].append({"fold": k, "patients": summary["num_patients"],
                               **{key: summary[key] for key, _ in FIGURES}})
    for key, _ in FIGURES:
        values = [row[key] for row in table["folds"] if row[key] is not None]
        table["mean"][key] = float(np.mean(values)) if values else None
        table["sd"][key] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    everyone = score_patients([p for patients in per_fold for p in patients],
                              [s for patients, s in zip(per_fold, by_fold) for _ in patients])
    table["all_patients"] = {"patients": everyone["num_patients"], **{key: everyone[key] for key, _ in FIGURES}}
    table["per_patient_dice"] = {pid: p["dice_3d"] for pid, p in everyone["patients"].items()}
    return table


def held_out_report(per_fold: list[list[ValidationPatient]], default: Settings) -> tuple[dict, Settings, list]:
    """The figures of held-out patients, fold by fold, under `default`, under the post-processing
    chosen on all of them (what the ensemble ships), and cross-fitted (each fold under the choice
    made on the others: the honest estimate of that choice); also the chosen settings and the
    steps measured."""
    chosen, steps = choose_postprocess([p for patients in per_fold for p in patients], default)
    fitted, fitted_settings = cross_fitted(per_fold, default)
    report = {"patients": sum(len(patients) for patients in per_fold),
              "postprocess": {"objective": OBJECTIVE, "on": "out-of-fold predictions of every fold",
                              "default": {**default.to_metadata(), "describe": default.describe()},
                              "chosen": {**chosen.to_metadata(), "describe": chosen.describe()},
                              "steps": steps,
                              "cross_fitted": [s.describe() for s in fitted_settings]},
              "default": summarize_folds(per_fold, default), "chosen": summarize_folds(per_fold, chosen),
              "cross_fitted": fitted}
    return report, chosen, steps


def cross_fitted(per_fold: list[list[ValidationPatient]], default: Settings) -> tuple[dict, list[Settings]]:
    """The held-out table with each fold scored under post-processing chosen on the other folds
    only: unlike the `chosen` table, no patient is scored with a choice made on itself."""
    chosen = [choose_postprocess([p for j, fold in enumerate(per_fold) if j != k for p in fold], default)[0]
              for k in range(len(per_fold))]
    return summarize_folds(per_fold, chosen), chosen


def choose_postprocess(patients: list[ValidationPatient], start: Settings) -> tuple[Settings, list]:
    """nnU-Net's rule on out-of-fold predictions: a step is adopted only if it raises the mean
    per-patient 3-D Dice over all out-of-fold patients."""
    from tfunet.evaluate import objective
    from tfunet.postprocess import tune

    return tune(patients, objective(OBJECTIVE), steps=TUNE_STEPS, start=start)


def _cell(key: str, mean, sd=None) -> str:
    from tfunet.evaluate import format_figure

    if mean is None:
        return "n/a"
    if key == "missed_patients":
        return f"{mean:.1f} ± {sd:.1f}" if sd is not None else f"{mean:g}"
    percent = key == "empty_slices_with_prediction"
    return format_figure(mean, percent) + (f" ± {format_figure(sd, percent)}" if sd is not None else "")


def table_markdown(table: dict) -> list[str]:
    lines = ["| | patients | " + " | ".join(label for _, label in FIGURES) + " |",
             "|---" * (len(FIGURES) + 2) + "|"]
    for row in table["folds"]:
        lines.append(f"| fold {row['fold']} | {row['patients']} | "
                     + " | ".join(_cell(key, row[key]) for key, _ in FIGURES) + " |")
    lines.append("| **mean ± sd over folds** | | "
                 + " | ".join(_cell(key, table['mean'][key], table['sd'][key]) for key, _ in FIGURES) + " |")
    everyone = table["all_patients"]
    lines.append(f"| all out-of-fold patients | {everyone['patients']} | "
                 + " | ".join(_cell(key, everyone[key]) for key, _ in FIGURES) + " |")
    return lines


def report_markdown(report: dict) -> str:
    chosen, default = report["postprocess"]["chosen"], report["postprocess"]["default"]
    lines = [f"# tfunet cross-validation: {report['folds']} folds", "",
             f"{report['patients']} patients ({report['dataset']}), "
             f"{report['config']['image_size']}x{report['config']['image_size']}, "
             f"base {report['config']['base_filters']}, {report['config']['epochs']} epochs per fold, "
             f"each fold's last epoch (nothing chosen on a held-out fold). "
             f"Wall time {report['wall_seconds'] / 60:.1f} min for all folds (training and out-of-fold "
             f"prediction; of the last command, if it resumed); dtype policy "
             f"{report['policy']}.", "",
             f"## Out-of-fold, default post-processing ({default['describe']})", ""]
    lines += table_markdown(report["default"])
    lines += ["", f"## Out-of-fold, post-processing chosen by cross-validation ({chosen['describe']})", "",
              "Chosen on these same out-of-fold predictions (as nnU-Net does), so slightly optimistic.", ""]
    lines += table_markdown(report["chosen"])
    if "cross_fitted" in report:
        by_fold = "; ".join(f"fold {k}: {d}" for k, d in enumerate(report["postprocess"]["cross_fitted"]))
        lines += ["", "## Out-of-fold, post-processing chosen on the other folds (cross-fitted)", "",
                  "Each fold scored under the post-processing chosen, by the same rule, on the other folds' "
                  f"patients only ({by_fold}): the honest estimate of what the choice does for new patients.",
                  ""]
        lines += table_markdown(report["cross_fitted"])
    lines += ["", f"## Post-processing choice (objective: mean out-of-fold {OBJECTIVE})", "",
              "| Step | Chosen | Candidates (score) |", "| --- | --- | --- |"]
    lines += [f"| {step['step']} | {step['chosen']} | "
              + ", ".join(f"{c['value']}: {c['score']:.4f}" for c in step["scores"]) + " |"
              for step in report["postprocess"]["steps"]]
    return "\n".join(lines) + "\n"


def report_console(report: dict) -> str:
    lines = [f"tfunet-train: cross-validation, {report['folds']} folds, {report['patients']} patients "
             f"(mean ± sd over folds)"]
    for name in ("default", "chosen", "cross_fitted"):
        if name not in report:
            continue
        describe = ("chosen on the other folds, fold by fold" if name == "cross_fitted"
                    else report["postprocess"][name]["describe"])
        lines.append(f"  post-processing {name.replace('_', '-')} ({describe}):")
        table = report[name]
        for key, label in FIGURES:
            lines.append(f"    {label:<36} {_cell(key, table['mean'][key], table['sd'][key])}")
    return "\n".join(lines)


# --- the run --------------------------------------------------------------------------------------

class FoldProgress(keras.callbacks.Callback):
    """One line per epoch: fold k of K, epoch, elapsed time of the whole cross-validation."""

    def __init__(self, k: int, num_folds: int, epochs: int, clock: WallClock):
        super().__init__()
        self.k, self.num_folds, self.epochs, self.clock = k, num_folds, epochs, clock

    def on_epoch_end(self, epoch, logs=None):
        self.clock.save()
        minutes, seconds = divmod(int(self.clock.seconds()), 60)
        print(f"tfunet-train: fold {self.k + 1} of {self.num_folds}, epoch {epoch + 1}/{self.epochs}, "
              f"elapsed {minutes}:{seconds:02d}", flush=True)


def _fold_trained(model_dir: Path, log_dir: Path, epochs: int) -> bool:
    """A fold whose training finished (its backup is gone, its log has every epoch) but whose
    out-of-fold file may not be written yet (a kill in between)."""
    from tfunet.train import BEST_MODEL

    log = log_dir / "train_log.csv"
    if not (model_dir / BEST_MODEL).is_file() or backed_up_epoch(backup_dir(log_dir)) or not log.is_file():
        return False
    return len(log.read_text().strip().splitlines()) - 1 >= epochs


def cross_validate(config, verbose: int | None = None) -> dict:
    """K-fold cross-validation as the module docstring says; returns the CV report."""
    from tfunet.metadata import make_metadata, write_metadata
    from tfunet.train import BEST_MODEL, start_session, train_split

    clock = WallClock(config.log_dir / WALL_FILE)
    session = start_session(config, verbose)
    source = make_source(config)
    plan = plan_folds(config, source)
    num_folds = len(plan["folds"])
    config.log_dir.mkdir(parents=True, exist_ok=True)
    write_split(plan, config.log_dir / "split.json")
    if session.verbose:
        sizes = ", ".join(str(len(fold)) for fold in plan["folds"])
        print(f"tfunet-train: {num_folds}-fold cross-validation over {sum(map(len, plan['folds']))} patients "
              f"(folds of {sizes}; {len(plan['test'])} test patients kept out); folds in "
              f"{config.log_dir / 'split.json'}", flush=True)
    per_fold = []
    for k in range(num_folds):
        model_dir, log_dir = config.model_dir / fold_name(k), config.log_dir / fold_name(k)
        oof_path = log_dir / OOF_FILE
        splits = fold_splits(source, plan, k)
        if not oof_path.is_file():
            if not _fold_trained(model_dir, log_dir, config.epochs):
                keras.utils.set_random_seed(config.seed)
                train_split(config, splits, session, model_dir, log_dir,
                            resume_key={**config.to_dict(), "fold": k, "split": plan["folds"]},
                            select=False, extra_metadata={"fold": k, "folds": num_folds},
                            callbacks=[FoldProgress(k, num_folds, config.epochs, clock)],
                            label=f"fold {k + 1} of {num_folds}: ")
            save_oof(predict_out_of_fold(model_dir / BEST_MODEL, splits, config), oof_path)
            clock.save()
        elif session.verbose:
            print(f"tfunet-train: fold {k + 1} of {num_folds} already done ({oof_path})", flush=True)
        per_fold.append(load_oof(oof_path))
    wall_seconds = clock.seconds()

    default = Settings(threshold=config.threshold)
    figures, chosen, steps = held_out_report(per_fold, default)
    report = {"folds": num_folds, "dataset": config.dataset, "policy": session.policy,
              "config": config.to_dict(), "wall_seconds": round(wall_seconds, 1), **figures}
    members = [f"{fold_name(k)}/{BEST_MODEL}" for k in range(num_folds)]
    cv_split = {"train": sorted(p for fold in plan["folds"] for p in fold), "val": [], "test": plan["test"]}
    meta = make_metadata(config, cv_split, policy=session.policy, folds=plan["folds"],
                         ensemble={"members": members, "selection": "last epoch of each fold"},
                         **chosen.to_metadata(),
                         tuning={"objective": OBJECTIVE, "split": "out-of-fold", "steps": steps,
                                 "cv_mean": {"default": report["default"]["mean"][OBJECTIVE],
                                             "chosen": report["chosen"]["mean"][OBJECTIVE]}})
    write_metadata(config.model_dir, meta)
    write_json(config.log_dir / "cv_metrics.json", report)
    write_text(config.log_dir / "cv_metrics.md", report_markdown(report))
    if session.verbose:
        print(report_console(report))
        print(f"tfunet-train: wrote {config.log_dir / 'cv_metrics.md'}, {config.log_dir / 'cv_metrics.json'} "
              f"and the ensemble's metadata {config.model_dir / 'tfunet.json'}", flush=True)
    return report
