"""The fast recipe's budget: its training wall time against 10 epochs of the original recipe at
base 16, side by side on one machine and the same patients; print JSON with the ratio (<= 1 is
within budget).

    python scripts/recipe_budget.py --data-dir ~/.cache/lgg64/kaggle_3m --out ~/runs/budget
    python scripts/recipe_budget.py ... --patients 12   # quicker: fewer patients, same epochs
    python scripts/recipe_budget.py ... --candidate "--recipe fast --deep-supervision --epochs 26"

Each side is `tfunet-train --dataset lgg --recipe R` in a fresh process on one seeded split of
the patients (OUT/split.json), timed from start to exit as a user waits (data preparation is
done before the clock starts). Both sides run all their epochs: scaling a few epochs up would
count the first epoch's tracing many times over. A finished side is kept in OUT/budget.json and
not rerun while its flags stay the same (delete it after changing a recipe). --candidate times a
third side, a recipe change under consideration, against the same original.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import machine  # noqa: E402
from train_runs import train_lgg  # noqa: E402

# The budget is 10 epochs of the original recipe at base 16 (the reference point).
SIDES = {"original": "--recipe original --base-filters 16 --epochs 10", "fast": "--recipe fast"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="a folder of LGG patients (kaggle_3m)")
    p.add_argument("--out", required=True, help="where runs, the split and budget.json go")
    p.add_argument("--patients", type=int, help="use the first N patients (default: all)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--candidate", metavar="FLAGS", help="tfunet-train flags of a third side to time, "
                                                          "e.g. a recipe change before it enters `fast`")
    return p.parse_args(argv)


def prepare(args, out: Path) -> Path:
    """Prepare the dataset shards (outside the clock) and write the shared split."""
    path = out / "split.json"
    if path.is_file():
        return path
    from tfunet.runtime import configure_tensorflow

    configure_tensorflow()
    from tfunet.config import make_config
    from tfunet.data.sources import make_source
    from tfunet.data.split import split_patients, write_split

    ids = sorted(make_source(make_config({"dataset": "lgg", "data_dir": args.data_dir})).patients())
    write_split(split_patients(ids[:args.patients] if args.patients else ids, seed=args.seed), path)
    return path


def run_side(args, name: str, flags: list[str], split: Path, out: Path) -> dict:
    start = time.perf_counter()
    code = train_lgg(name, args.data_dir, split, args.seed, out / name, flags, out / f"{name}.log")
    seconds = time.perf_counter() - start
    if code:
        raise SystemExit(f"recipe_budget: {name} failed (exit {code}); see {out / name}.log")
    return {"flags": shlex.join(flags), "seconds": round(seconds, 1)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    split = prepare(args, out)
    result_path = out / "budget.json"
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    result.update({"machine": machine(), "patients": sum(len(v) for v in json.loads(split.read_text()).values()),
                   "sides": result.get("sides", {})})
    from tfunet.fileio import write_json

    sides = {**SIDES, **({"candidate": args.candidate} if args.candidate else {})}
    for name, flags in sides.items():
        flags = shlex.split(flags)
        if result["sides"].get(name, {}).get("flags") != shlex.join(flags):
            shutil.rmtree(out / name, ignore_errors=True)  # another recipe's run would resume, not start
            result["sides"][name] = run_side(args, name, flags, split, out)
            write_json(result_path, result)
    seconds = {name: result["sides"][name]["seconds"] for name in sides}
    result["ratio_fast_to_original"] = round(seconds["fast"] / seconds["original"], 3)
    result["within_budget"] = result["ratio_fast_to_original"] <= 1.0
    if args.candidate:
        result["ratio_candidate_to_original"] = round(seconds["candidate"] / seconds["original"], 3)
        result["candidate_within_budget"] = result["ratio_candidate_to_original"] <= 1.0
    write_json(result_path, result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
