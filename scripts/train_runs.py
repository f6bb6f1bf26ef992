"""Run `tfunet-train --dataset lgg` on a split file in a fresh process, its output in a log file:
the one way the recipe scripts (ablate.py, recipe_budget.py) train."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path


def train_lgg(name: str, data_dir: str, split: Path, seed: int, output_dir: Path, flags: list[str],
              log: Path, append: bool = False) -> int:
    """Train into output_dir; return the exit code. `append` keeps earlier attempts in the log
    (a resumed run), otherwise the log starts afresh."""
    command = ["tfunet-train", "--dataset", "lgg", "--data-dir", str(data_dir), "--split-file", str(split),
               "--seed", str(seed), "--output-dir", str(output_dir), *flags]
    script = Path(sys.argv[0]).stem
    print(f"{script}: {name}: {shlex.join(command)}", file=sys.stderr, flush=True)
    with open(log, "a" if append else "w") as out:
        return subprocess.run(command, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}).returncode
