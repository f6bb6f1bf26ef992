"""How much of the post-processing gain a cross-validation reports survives choosing it on other
patients? Print JSON, per run, of its held-out figures under default post-processing, under the
post-processing chosen on every fold (what `tfunet-train --folds` reports), and cross-fitted.

    python scripts/postprocess_crossfit.py ~/runs/ablate/baseline ~/runs/ablate/deep_supervision \
        --reference baseline

`tfunet-train --folds` chooses post-processing (threshold, component size, largest 3-D
component, flip TTA) on the out-of-fold predictions of every fold and scores those same
predictions with it, so its `chosen` figures are optimistic. Cross-fitted, each fold is scored
with the post-processing chosen, by the same rule, on the other folds' patients only: the
estimate of what a choice made on some patients does for patients it never saw. It reads the
out-of-fold probabilities a cross-validation saves (logs/fold_K/oof_probabilities.npz); nothing
is predicted again. With --reference, each run's cross-fitted per-patient Dice is paired with
that run's: recipes compared as a user gets them, post-processing chosen on validation included.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablate import PATIENT_FIGURES, mean_sd, paired  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="output folders of finished `tfunet-train --folds` runs (ablate.py rows)")
    p.add_argument("--reference", help="one of the runs (its folder name): pair every run's cross-fitted "
                                       "per-patient Dice with its own (the same folds)")
    return p.parse_args(argv)


def fold_files(run: Path) -> list[Path]:
    """The run's out-of-fold probability files, fold by fold; a one-line error unless it is a
    finished cross-validation with at least 2 of them."""
    if not (run / "logs" / "cv_metrics.json").is_file():
        raise SystemExit(f"postprocess_crossfit: {run / 'logs' / 'cv_metrics.json'} not found: "
                         f"is {run} a finished `tfunet-train --folds` run?")
    files = sorted((run / "logs").glob("fold_*/oof_probabilities.npz"), key=lambda f: int(f.parent.name[5:]))
    if len(files) < 2:
        raise SystemExit(f"postprocess_crossfit: {run} has {len(files)} fold(s) of out-of-fold probabilities; "
                         "cross-fitting needs at least 2")
    return files


def crossfit_run(run: Path) -> dict:
    from tfunet.crossval import cross_fitted, load_oof
    from tfunet.postprocess import Settings

    files = fold_files(run)
    report = json.loads((run / "logs" / "cv_metrics.json").read_text())
    default = Settings.from_metadata(report["postprocess"]["default"])
    fitted, chosen = cross_fitted([load_oof(f) for f in files], default)

    return {"folds": len(files),
            "default": mean_sd(report["default"], PATIENT_FIGURES),
            "chosen_on_all_folds": {"postprocess": report["postprocess"]["chosen"]["describe"],
                                    **mean_sd(report["chosen"], PATIENT_FIGURES),
                                    "vs_default": paired(report["chosen"], report["default"])},
            "cross_fitted": {"postprocess_by_fold": [c.describe() for c in chosen],
                             **mean_sd(fitted, PATIENT_FIGURES),
                             "vs_default": paired(fitted, report["default"]),
                             "per_patient_dice": fitted["per_patient_dice"]}}


def main(argv=None) -> dict:
    args = parse_args(argv)
    runs = [Path(r).expanduser() for r in args.runs]
    for run in runs:  # every bad path is named before any work
        fold_files(run)
    names = [run.name for run in runs]
    if args.reference and args.reference not in names:
        raise SystemExit(f"postprocess_crossfit: --reference {args.reference!r} is not one of the runs ({', '.join(names)})")
    result = {run.name: crossfit_run(run) for run in runs}
    if args.reference:
        for row in result.values():
            row["cross_fitted"]["vs_reference"] = paired(row["cross_fitted"], result[args.reference]["cross_fitted"])
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
