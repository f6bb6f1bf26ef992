"""Pair two ablation rows by patient across two ablation.json files; print JSON.

    python scripts/pair_rows.py scripts/results/ablate64_zen3_lr_shape.json:foreground_lr_5e-3_warmup_1 \
        scripts/results/ablate64_zen1.json:foreground_lr_3e-3_warmup_1

`ablate.py --reference` pairs rows of one output folder. Rows of two runs pair just as well
when both ran on the same folds at the same --base and training repeats across the two
machines; a row both files hold (e.g. the reference both reran) is the evidence, so its
patient-by-patient agreement is printed too ("shared_rows"). Both files' --base must match.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablate import paired, patient_differences  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("row", help="FILE:ROW, the row whose gain is measured")
    p.add_argument("reference", help="FILE:ROW, the row it is paired with")
    return p.parse_args(argv)


def load_row(spec: str) -> tuple[dict, dict]:
    """(the ablation.json, its row) of FILE:ROW."""
    path, _, name = spec.rpartition(":")
    if not path or not name:
        raise SystemExit(f"pair_rows: {spec!r} is not FILE:ROW")
    if not Path(path).is_file():
        raise SystemExit(f"pair_rows: {path} not found")
    ablation = json.loads(Path(path).read_text())
    row = ablation.get("rows", {}).get(name)
    if not row or "per_patient_dice" not in row:
        raise SystemExit(f"pair_rows: {path} has no finished row {name!r} (it has {sorted(ablation.get('rows', {}))})")
    return ablation, row


def agreement(a: dict, b: dict) -> dict:
    """How closely the same row of two runs repeats, patient by patient."""
    diffs = [abs(d) for d in patient_differences(a, b).values()]
    return {"patients": len(diffs), "identical": sum(d == 0 for d in diffs), "max_abs_diff": max(diffs, default=0.0)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    (file_a, row), (file_b, reference) = load_row(args.row), load_row(args.reference)
    if file_a["base"] != file_b["base"]:
        raise SystemExit(f"pair_rows: the files ran at different --base ({file_a['base']!r} and "
                         f"{file_b['base']!r}): their rows do not pair")
    if set(row["per_patient_dice"]) != set(reference["per_patient_dice"]):
        raise SystemExit("pair_rows: the two rows scored different patients: were they on the same folds?")
    shared = sorted(set(file_a["rows"]) & set(file_b["rows"]))
    result = {"row": args.row, "reference": args.reference, "base": file_a["base"],
              "paired_patient_dice": paired(row, reference),
              "shared_rows": {name: agreement(file_a["rows"][name], file_b["rows"][name]) for name in shared
                              if "per_patient_dice" in file_a["rows"][name] and
                              "per_patient_dice" in file_b["rows"][name]}}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
