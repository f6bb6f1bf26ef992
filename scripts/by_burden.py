"""Where an ablation's per-patient Dice is lost: each row's patients split into equal groups by
tumour burden (tumour pixels over the volume, smallest first); print JSON of each group's mean
and median per-patient 3-D Dice, the patients below 0.5 and those missed (Dice 0).

    python scripts/by_burden.py scripts/results/headline64_2f.json \
        --folds scripts/results/headline64_2f_folds.json

The mean goal of issue 18 is 0.82; the median is already close to its 0.85, so the gap is in a
tail of patients, and this says whether those are the small tumours.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ablation", help="an ablation.json of scripts/ablate.py")
    p.add_argument("--folds", help="its folds file, with tumour_pixels (default: the one it names)")
    p.add_argument("--groups", type=int, default=3, help="how many burden groups (default: 3)")
    p.add_argument("--rows", nargs="+", help="only these rows (default: all)")
    return p.parse_args(argv)


def by_burden(per_patient: dict[str, float], pixels: dict[str, int], groups: int) -> list[dict]:
    """The patients of `per_patient` in `groups` equal groups by tumour pixels (the first groups
    one smaller when they do not divide), each group's range of pixels and its Dice figures."""
    patients = sorted(per_patient, key=lambda p: (pixels[p], p))
    n = len(patients)
    out = []
    for i in range(groups):
        group = patients[i * n // groups:(i + 1) * n // groups]
        dice = [per_patient[p] for p in group]
        out.append({"patients": len(group), "tumour_pixels": [pixels[group[0]], pixels[group[-1]]],
                    "patient_dice_mean": round(statistics.fmean(dice), 4),
                    "patient_dice_median": round(statistics.median(dice), 4),
                    "below_half": sum(d < 0.5 for d in dice), "missed": sum(d == 0 for d in dice)})
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    ablation = json.loads(Path(args.ablation).read_text())
    pixels = json.loads(Path(args.folds or ablation["folds_file"]).read_text())["tumour_pixels"]
    rows = {name: row for name, row in ablation["rows"].items()
            if "per_patient_dice" in row and (not args.rows or name in args.rows)}
    if args.rows and set(args.rows) - set(rows):
        raise SystemExit(f"by_burden: no per-patient Dice for rows {sorted(set(args.rows) - set(rows))}")
    # Tumour-free patients have no Dice to lose (an empty prediction scores 1); they would only
    # dilute the smallest group.
    results = {name: by_burden({p: d for p, d in row["per_patient_dice"].items() if pixels.get(p)}, pixels,
                               args.groups)
               for name, row in rows.items()}
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
