"""Check the out-of-the-box run: `tfunet-train` with no arguments must finish in under
5 minutes on 2 CPU cores and reach pooled validation Dice >= 0.80.

Runs the real console command in a temporary folder and prints JSON. Exit status 1 if a
target is missed.

    python scripts/check_default_run.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TIME_LIMIT_S = 300.0
DICE_TARGET = 0.80


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="run in this folder and keep its outputs")
    args = parser.parse_args()
    workdir = Path(args.keep or tempfile.mkdtemp(prefix="tfunet-default-"))
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(["tfunet-train"], cwd=workdir, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return 1
    with open(workdir / "logs" / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    best = max(float(r["val_dice_pooled"]) for r in rows)
    result = {
        "command": "tfunet-train",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "wall_seconds": round(wall, 1),
        "epochs": len(rows),
        "best_val_dice_pooled": round(best, 4),
        "val_dice_pooled_per_epoch": [round(float(r["val_dice_pooled"]), 4) for r in rows],
        "time_limit_s": TIME_LIMIT_S,
        "dice_target": DICE_TARGET,
        "passed": wall < TIME_LIMIT_S and best >= DICE_TARGET,
    }
    print(json.dumps(result, indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
