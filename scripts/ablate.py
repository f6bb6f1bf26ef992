"""Recipe ablations by cross-validation: each row is `tfunet-train --folds` with some flags
changed, on the same folds; print JSON of every row's CV mean ± sd and wall time.

    python scripts/ablate.py --data-dir ~/.cache/lgg64/kaggle_3m --out ~/runs/ablate
    python scripts/ablate.py --data-dir ... --out ... --rows baseline foreground_third

The folds are dealt once (OUT/folds.json) and every row trains on them, so rows compare paired
by fold. Every row is its own output folder (OUT/<row>/); a finished row (its
logs/cv_metrics.json) is skipped (delete its folder after changing its flags), and a killed one resumes at its fold and epoch, because
tfunet-train --folds does. --base sets the flags every row shares (the reduced scale at which
levers are ranked); ROWS holds each lever's flags. The ENSEMBLES rows (lever h) score, on each
held-out fold, the ensemble of a cross-validation on that fold's training patients instead of
one model. --no-train only reports the finished rows (safe beside a running ablation of OUT).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_runs import train_lgg  # noqa: E402

BASE = "--image-size 128 --base-filters 16 --epochs 10"
ROWS = {
    "baseline": "",
    "foreground_third": "--foreground-share 0.33",
    "no_augment": "--no-augment",
    "dice_weight_2": "--dice-weight 2",
    "lr_3e-3_warmup_1": "--lr 3e-3 --warmup-epochs 1",
    "deep_supervision": "--deep-supervision",
    "dice_per_slice": "--dice-per-slice",
    "augment_nnunet": "--augmentation nnunet",
    # Lever a at the 64x64 scale: twice the epochs, the first 16 at half the resolution (32x32),
    # for about the wall time of the base's 10 epochs at 64x64.
    "resolution_schedule": "--epochs 20 --coarse-size 32 --coarse-epochs 16",
    # Lever g at the 64x64 scale: width, depth and batch size, each with the epochs that take
    # about the wall time of the base's 10. Medians of epochs 2-4 of 4-epoch runs on the Xeon of
    # docs/recipes.md (scripts/results/ablate64_xeon_g_epoch_times.json): 25 s at base 16,
    # 11 at base 8, 78 at base 32 (59-90: 4 epochs rather than 3), 18 at depth 3, 30 at batch 8,
    # 17 at batch 32.
    "width_8": "--base-filters 8 --epochs 22",
    "width_32": "--base-filters 32 --epochs 4",
    "depth_3": "--depth 3 --epochs 13",
    "batch_8": "--batch-size 8 --epochs 8",
    "batch_32": "--batch-size 32 --epochs 14",
    # Lever g's lead at the fast recipe's 128x128 (run with --base "--recipe fast --epochs 10
    # --validate-every 10"): a base-8 step costs 0.53 of a base-16 one there (367 against 695 ms,
    # scripts/bench_step.py on the Cascade Lake Xeon), so 18 epochs for the base's 10.
    "width_8_128": "--base-filters 8 --epochs 18",
    # Lever c's lead at 128x128 within the base's wall time (the same --base as width_8_128): a
    # deep-supervision epoch cost about 1.25 plain ones there (32 against 25 min for 2 folds of
    # 10 epochs on the Zen 3 of docs/recipes.md), so 8 epochs; alone, and with the lr lead.
    "deep_supervision_8": "--deep-supervision --epochs 8",
    "deep_supervision_8_lr_3e-3_warmup_1": "--deep-supervision --epochs 8 --lr 3e-3 --warmup-epochs 1",
    # Lever a at the fast recipe's 128x128 (the same --base as width_8_128): 7 epochs at 128x128,
    # then 1 at 256x256, where an epoch costs about 4 at 128x128 (scripts/results/recipe_budget.json:
    # 55 s an epoch at 256 against 13.5 at 128), so about the wall time of the base's 10.
    "resolution_128_256": "--image-size 256 --coarse-size 128 --epochs 8 --coarse-epochs 7",
    # The same with a fresh cosine from 5e-4 for the 256x256 epoch (--fine-lr): without it that
    # epoch runs on the tail of the schedule, too little to adapt to the new scale.
    "resolution_128_256_restart": "--image-size 256 --coarse-size 128 --epochs 8 --coarse-epochs 7 --fine-lr 5e-4",
    # Do lever g's lead and foreground oversampling (in `fast`) stack? Base 8 for 22 epochs with
    # a third of each batch from tumour slices; pair it with foreground_third (--reference).
    "foreground_width_8": "--foreground-share 0.33 --base-filters 8 --epochs 22",
    # Do the other leads stack on foreground oversampling? Each with a third of each batch from
    # tumour slices; pair them with foreground_third (--reference).
    "foreground_augment_nnunet": "--foreground-share 0.33 --augmentation nnunet",
    "foreground_deep_supervision": "--foreground-share 0.33 --deep-supervision",
    "foreground_lr_3e-3_warmup_1": "--foreground-share 0.33 --lr 3e-3 --warmup-epochs 1",
    "foreground_dice_weight_2": "--foreground-share 0.33 --dice-weight 2",
    # The lr lead's shape: a higher peak, and the same peak without its warm-up epoch.
    "foreground_lr_5e-3_warmup_1": "--foreground-share 0.33 --lr 5e-3 --warmup-epochs 1",
    "foreground_lr_3e-3": "--foreground-share 0.33 --lr 3e-3",
    # Is it the warm-up alone? The same warm-up epoch at the default peak (1e-3).
    "foreground_warmup_1": "--foreground-share 0.33 --warmup-epochs 1",
    # Lever b's share: half of each batch from tumour slices instead of nnU-Net's third.
    "foreground_half": "--foreground-share 0.5",
    # Lever f's one-cycle shape (Smith 2018), as Keras's CosineDecay gives it: a linear warm-up
    # over 3 of the 10 epochs to the peak, then a cosine to zero (no momentum cycling); at the
    # lr lead's peak and at a super-convergence one.
    "foreground_one_cycle_3e-3": "--foreground-share 0.33 --lr 3e-3 --warmup-epochs 3",
    "foreground_one_cycle_1e-2": "--foreground-share 0.33 --lr 1e-2 --warmup-epochs 3",
    # Lever b's draw: a patient with tumour first, then one of its tumour slices (nnU-Net picks
    # a case, then foreground), so small tumours are drawn as often as large ones.
    "foreground_by_patient": "--foreground-share 0.33 --foreground-sampling patient",
    # The headline pair (run with --base "" or "--validate-every 10", and --reference
    # recipe_original): the two named recipes, the original at the budget of issue 18 (10 epochs
    # at base 16).
    "recipe_original": "--recipe original --base-filters 16 --epochs 10",
    "recipe_fast": "--recipe fast",
    # The lr lead (lever f, on top of foreground oversampling) at full scale: pair it with
    # recipe_fast on the headline folds before it enters `fast`.
    "recipe_fast_lr_3e-3_warmup_1": "--recipe fast --lr 3e-3 --warmup-epochs 1",
    # The eleventh batch's lead at full scale: deep supervision and the lr lead together, with
    # the epochs cut from 32 to 26 for deep supervision's 1.25x epochs (scripts/recipe_budget.py
    # --candidate times it against the budget). Pair it with recipe_fast on the headline folds.
    "recipe_fast_deep_supervision_lr": "--recipe fast --deep-supervision --epochs 26 --lr 3e-3 --warmup-epochs 1",
    # Lever h at the 64x64 scale: a K-fold ensemble against one model (see ENSEMBLES), its
    # members' epochs for the training cost of the base's 10 on all patients: 3 members on 2/3
    # of the patients for 5 epochs each, or 2 members on half of them for the base's 10.
    "ensemble_3": "--epochs 5",
    "ensemble_2": "",
}
# Rows whose model for a held-out fold is not one network but the ensemble of a K-fold
# cross-validation on that fold's training patients (row -> K), scored on the held-out fold:
# the fold ensemble tfunet-train --folds leaves behind, against one model at equal training cost.
ENSEMBLES = {"ensemble_3": 3, "ensemble_2": 2}
FIGURES = ("patient_dice_mean", "patient_dice_median", "dice_tumour_slices", "dice_pooled",
           "empty_slices_with_prediction", "missed_patients")
# The figures the rescoring scripts (score_native.py, postprocess_crossfit.py) print.
PATIENT_FIGURES = tuple(key for key in FIGURES if key != "dice_pooled")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="a folder of LGG patients (kaggle_3m)")
    p.add_argument("--out", required=True, help="where rows, folds and ablation.json go")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--base", default=BASE, help=f"flags every row shares (default: {BASE})")
    p.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=list(ROWS))
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--reference", default="baseline", choices=sorted(ROWS),
                   help="the row every other row is paired with (default: baseline)")
    p.add_argument("--markdown", action="store_true", help="print the table of rows as Markdown instead of JSON")
    p.add_argument("--no-train", action="store_true",
                   help="only report the finished rows of --rows: train nothing, write nothing (safe beside a "
                        "running ablation of the same OUT)")
    return p.parse_args(argv)


def deal_folds(args, path: Path) -> None:
    """The shared split file: the patients of --data-dir dealt into --folds folds by burden."""
    from tfunet.runtime import configure_tensorflow

    configure_tensorflow()
    from tfunet.config import make_config
    from tfunet.crossval import plan_folds
    from tfunet.data.sources import make_source
    from tfunet.data.split import write_split

    config = make_config({"dataset": "lgg", "data_dir": args.data_dir, "folds": args.folds, "seed": args.seed})
    write_split(plan_folds(config, make_source(config)), path)


def ensemble_row(name: str, args, folds: Path, row_dir: Path, flags: str, k: int) -> int:
    """Lever h: for each outer fold, a k-fold CV on the other folds' patients (its test list:
    the outer fold), then its ensemble's probabilities on the outer fold; write the row's
    report where a CV row's goes (row_dir/logs/cv_metrics.json). Returns an exit code."""
    from tfunet.runtime import configure_tensorflow

    configure_tensorflow()
    from tfunet.crossval import held_out_report, load_oof, predict_out_of_fold, save_oof
    from tfunet.data.sources import DataSplits, config_for_model, make_source
    from tfunet.data.split import make_folds, write_split
    from tfunet.loading import model_metadata
    from tfunet.postprocess import Settings
    from tfunet.resume import WallClock

    plan = json.loads(folds.read_text())
    per_fold, wall = [], 0.0
    for j, held_out in enumerate(plan["folds"]):
        inner_dir, split = row_dir / f"outer_{j}", row_dir / f"outer_{j}_split.json"
        if not split.is_file():
            train = [p for i, fold in enumerate(plan["folds"]) if i != j for p in fold]
            write_split({"folds": make_folds({p: plan["tumour_pixels"][p] for p in train}, k, args.seed),
                         "test": sorted(held_out)}, split)
        inner_report = inner_dir / "logs" / "cv_metrics.json"
        if not inner_report.is_file():  # a finished inner CV is skipped, as main() skips a row
            code = train_lgg(f"{name} outer fold {j + 1}", args.data_dir, split, args.seed, inner_dir,
                             shlex.split(flags), row_dir.parent / f"{name}.log", append=True)
            if code:
                return code
        wall += json.loads(inner_report.read_text())["wall_seconds"]
        probs = inner_dir / "logs" / "test_probabilities.npz"
        # The scoring time is kept beside the probabilities, so a resumed row still counts it.
        scoring = WallClock(inner_dir / "logs" / "test_scoring.json")
        if not probs.is_file():
            ensemble = inner_dir / "saved_models"
            config = config_for_model(model_metadata(ensemble), data_dir=args.data_dir)
            # The held-out fold as "val", as a CV fold holds it out (tfunet.crossval.fold_splits).
            splits = DataSplits(make_source(config), {"train": [], "val": sorted(held_out), "test": []})
            save_oof(predict_out_of_fold(ensemble, splits, config), probs)
            scoring.save()
        wall += scoring.seconds()
        per_fold.append(load_oof(probs))
    report, _, _ = held_out_report(per_fold, Settings())
    report["wall_seconds"] = round(wall, 1)
    write_json(row_dir / "logs" / "cv_metrics.json", report)
    return 0


def write_json(path, value):
    from tfunet.fileio import write_json as atomic_write_json

    atomic_write_json(path, value)


def summary(report: dict) -> dict:
    row = {"wall_seconds": report["wall_seconds"], "patients": report["patients"]}
    for name in ("default", "chosen", "cross_fitted"):  # cross_fitted: reports since 2026-12-07
        if name in report:
            row[name] = mean_sd(report[name])
    row["postprocess_chosen"] = report["postprocess"]["chosen"]["describe"]
    row["per_patient_dice"] = report["default"]["per_patient_dice"]
    if "cross_fitted" in report:
        row["cross_fitted_per_patient_dice"] = report["cross_fitted"]["per_patient_dice"]
    return row


def mean_sd(table: dict, keys=FIGURES) -> dict:
    """A CV report table's mean and sd over folds of each figure in `keys`."""
    return {key: {"mean": table["mean"][key], "sd": table["sd"][key]} for key in keys}


def patient_differences(row: dict, reference: dict, key: str = "per_patient_dice") -> dict[str, float]:
    """Per-patient 3-D Dice of `row` minus `reference` (both under `key`), by patient, over the
    patients both scored."""
    common = sorted(set(row[key]) & set(reference[key]))
    return {p: row[key][p] - reference[key][p] for p in common}


def paired(row: dict, reference: dict, key: str = "per_patient_dice") -> dict:
    """The row minus the reference row in per-patient 3-D Dice (default post-processing, or the
    per-patient Dice under `key`), paired by patient: same folds, so each patient was held out of
    the same training patients in both. The standard error of the mean difference says whether
    a lever's gain is more than noise."""
    import statistics

    diffs = list(patient_differences(row, reference, key).values())
    if len(diffs) < 2:
        return {}
    return {"patients": len(diffs), "mean": statistics.fmean(diffs),
            "se": statistics.stdev(diffs) / len(diffs) ** 0.5,
            "better": sum(d > 0 for d in diffs), "worse": sum(d < 0 for d in diffs)}


def pair_with_reference(results: dict, reference_name: str) -> None:
    """Pair every finished row with the reference row by patient, once the reference has finished
    (an unfinished or failed reference row carries only its flags and an error)."""
    reference = results["rows"].get(reference_name) or {}
    results["reference"] = reference_name
    for name, row in results["rows"].items():
        if "per_patient_dice" in reference and name != reference_name and "per_patient_dice" in row:
            row["vs_reference_patient_dice"] = paired(row, reference)
            if "cross_fitted_per_patient_dice" in row and "cross_fitted_per_patient_dice" in reference:
                # As a user gets each recipe: post-processing chosen on other patients included.
                row["vs_reference_cross_fitted"] = paired(row, reference, key="cross_fitted_per_patient_dice")


def markdown(results: dict) -> str:
    """The rows as the Markdown tables of docs/recipes.md show them (default post-processing,
    and a cross-fitted column once a row has one: recipes compared as a user of a CV gets them)."""
    def cell(table, key, percent=False):
        mean, sd = table[key]["mean"], table[key]["sd"]
        return f"{100 * mean:.1f}% ± {100 * sd:.1f}%" if percent else f"{mean:.3f} ± {sd:.3f}"

    def paired_cell(vs):
        return (f"{vs['mean']:+.3f} ± {vs['se']:.3f} (better {vs['better']}, worse {vs['worse']} of "
                f"{vs['patients']})" if vs else "")

    rows = results["rows"]
    fitted = any("cross_fitted" in row for row in rows.values())
    head = ["row", "flags", "per-patient 3-D Dice", "median", "Dice, tumour slices", "empty slices with FP",
            "patients missed per fold", f"vs {results['reference']}, paired by patient"]
    if fitted:
        head.append(f"cross-fitted post-processing, vs {results['reference']}")
    head.append("wall")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, row in rows.items():
        flags = row["flags"].replace(results["base"], "").strip() or "(base)"
        if "error" in row:
            lines.append(f"| {name} | `{flags}` | {row['error']} |" + " |" * (len(head) - 3))
            continue
        default, missed = row["default"], row["default"]["missed_patients"]
        cells = [name, f"`{flags}`", cell(default, "patient_dice_mean"), cell(default, "patient_dice_median"),
                 cell(default, "dice_tumour_slices"), cell(default, "empty_slices_with_prediction", True),
                 f"{missed['mean']:.1f} ± {missed['sd']:.1f}", paired_cell(row.get("vs_reference_patient_dice"))]
        if fitted:
            vs = paired_cell(row.get("vs_reference_cross_fitted"))
            cells.append(cell(row["cross_fitted"], "patient_dice_mean") + (f": {vs}" if vs else "")
                         if "cross_fitted" in row else "")
        cells.append(f"{row['wall_seconds'] / 60:.0f} min")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out).expanduser()
    folds = out / "folds.json"
    if args.no_train and not folds.is_file():
        raise SystemExit(f"ablate: {folds} not found: nothing has run in {out}")
    out.mkdir(parents=True, exist_ok=True)
    if not folds.is_file():
        deal_folds(args, folds)
    previous = json.loads((out / "ablation.json").read_text()) if (out / "ablation.json").is_file() else {}
    # Rows of earlier invocations stay in ablation.json (same base only: they compare paired).
    kept = previous.get("rows", {}) if previous.get("base") == args.base else {}
    results = {"folds_file": str(folds), "base": args.base, "rows": kept}
    for name in args.rows:
        row_dir = out / name
        report_path = row_dir / "logs" / "cv_metrics.json"
        flags = f"{args.base} {ROWS[name]}".strip()
        code = 0
        if not report_path.is_file() and not args.no_train:
            if name in ENSEMBLES:
                code = ensemble_row(name, args, folds, row_dir, flags, ENSEMBLES[name])
            else:
                code = train_lgg(name, args.data_dir, folds, args.seed, row_dir, shlex.split(flags),
                                 out / f"{name}.log", append=True)
        if code:
            results["rows"][name] = {"flags": flags, "error": f"exit {code}; see {out / name}.log"}
        elif report_path.is_file():
            results["rows"][name] = {"flags": flags, **summary(json.loads(report_path.read_text()))}
        else:
            results["rows"][name] = {"flags": flags, "error": "not finished"}
        if not args.no_train:  # paired and saved now, so a run stopped at a later row leaves this one complete
            pair_with_reference(results, args.reference)
            write_json(out / "ablation.json", results)
    if args.no_train:
        pair_with_reference(results, args.reference)
    print(markdown(results) if args.markdown else json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
