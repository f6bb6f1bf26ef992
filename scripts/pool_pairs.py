"""Pool one row-against-reference comparison over replicate runs; print JSON.

    python scripts/pool_pairs.py recipe_fast_deep_supervision_lr recipe_fast \
        scripts/results/pair_fast_zen3_2f.json scripts/results/confirm_fast_zen3_3f.json

Each file is an ablation.json of `ablate.py` holding both rows, run on other folds or seeds of
the same patients. A patient then has one paired difference per replicate, and those are not
independent patients: each patient's differences are averaged first, and the standard error
is taken over patients. Pooling halves the training noise a single pair carries (a recipe rerun
moves single patients by up to 0.3), which is what a gain of 0.02 needs. Both the default and,
where every file has it, the cross-fitted post-processing are pooled.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablate import paired, patient_differences  # noqa: E402

KEYS = {"default": "per_patient_dice", "cross_fitted": "cross_fitted_per_patient_dice"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("row", help="the row whose gain is measured")
    p.add_argument("reference", help="the row it is paired with")
    p.add_argument("files", nargs="+", help="ablation.json files that each hold both rows")
    return p.parse_args(argv)


def load_pair(path: str, row: str, reference: str) -> tuple[dict, dict]:
    if not Path(path).is_file():
        raise SystemExit(f"pool_pairs: {path} not found")
    rows = json.loads(Path(path).read_text()).get("rows", {})
    for name in (row, reference):
        if "per_patient_dice" not in rows.get(name, {}):
            raise SystemExit(f"pool_pairs: {path} has no finished row {name!r} (it has {sorted(rows)})")
    return rows[row], rows[reference]


def pooled(pairs: list[tuple[dict, dict]], key: str) -> dict:
    """Mean over patients of each patient's mean difference over the replicates, with its
    standard error over patients."""
    by_patient: dict[str, list[float]] = {}
    for row, reference in pairs:
        for patient, diff in patient_differences(row, reference, key).items():
            by_patient.setdefault(patient, []).append(diff)
    means = [statistics.fmean(diffs) for diffs in by_patient.values()]
    if len(means) < 2:
        return {}
    return {"patients": len(means), "replicates": len(pairs), "mean": statistics.fmean(means),
            "se": statistics.stdev(means) / len(means) ** 0.5,
            "better": sum(m > 0 for m in means), "worse": sum(m < 0 for m in means)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    pairs = [load_pair(path, args.row, args.reference) for path in args.files]
    result = {"row": args.row, "reference": args.reference, "files": args.files}
    for name, key in KEYS.items():
        if all(key in row and key in reference for row, reference in pairs):
            result[name] = {"pooled": pooled(pairs, key),
                            "per_file": [paired(row, reference, key) for row, reference in pairs]}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
