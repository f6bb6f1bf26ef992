"""Is bfloat16 training as good as float32? Paired runs by seed, best validation Dice per arm.

For each seed, trains the same config twice, once under float32 (`--mixed-precision off`) and
once under bfloat16, and records the best validation pooled Dice of each. Prints JSON with the
per-run rows, the mean per arm and the paired difference (bfloat16 - float32) mean +- sd,
and a verdict by the rule tfunet's `auto` follows:
  * bfloat16 worse by more than 0.01 and by more than the sd: `auto` must not train in it;
  * |difference| < sd: no measurable difference;
  * otherwise: the difference as measured.
`--arms A B` compares any two settings the same way (B - A), e.g. a speed lever before it
becomes a default: `--arms fused_batch_norm=false fused_batch_norm=true`.
Rows are written to --output after every run, and a rerun skips the rows already there, so a
killed run resumes. On a CPU without bfloat16 instructions bfloat16 is emulated (~15x slower);
--bf16-xla (default there) compiles the bfloat16 arm with XLA, which emulates it faster.

    python scripts/bench_precision.py --output scripts/results/precision_synthetic.json
    python scripts/bench_precision.py --dataset lgg --data-dir DIR/kaggle_3m \\
        --output scripts/results/precision_lgg.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_evaluate import cpu_description  # noqa: E402

from tfunet.runtime import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow starts, as every tfunet command does

ARMS = ("mixed_precision=off", "mixed_precision=bfloat16")
LGG_BUDGET = dict(image_size=128, base_filters=16, epochs=10)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=("synthetic", "lgg"), default="synthetic")
    p.add_argument("--data-dir", help="lgg: a folder of LGG patients (kaggle_3m)")
    p.add_argument("--cache-dir", help="lgg: where prepared shards go")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=int, help="default: the dataset preset (synthetic) or 10 (lgg)")
    p.add_argument("--bf16-xla", choices=("auto", "on", "off"), default="auto",
                   help="XLA for the bfloat16 arm (auto: on where the CPU has no bfloat16 instructions)")
    p.add_argument("--arms", nargs=2, default=list(ARMS), metavar=("A=VALUE", "B=VALUE"),
                   help="the two tfunet-train settings compared, B - A (default: float32, then bfloat16)")
    p.add_argument("--output", required=True, help="JSON file; finished rows in it are skipped")
    return p.parse_args(argv)


def cpu_has_bfloat16() -> bool:
    from tfunet.precision import BF16_CPU_FLAGS, cpu_flags

    return bool(BF16_CPU_FLAGS & cpu_flags())


def arm_options(arm: str) -> dict:
    key, sep, value = arm.partition("=")
    if not sep:
        raise SystemExit(f"bench_precision: an arm is OPTION=VALUE, got {arm!r}")
    return {key.replace("-", "_"): value}


def arm_of(row: dict) -> str:
    """The row's arm (rows written before --arms existed name their policy only)."""
    return row.get("arm") or f"mixed_precision={row['precision']}"


def run_one(args, seed: int, arm: str) -> dict:
    import keras

    from tfunet.config import make_config
    from tfunet.metadata import read_metadata
    from tfunet.train import train

    options = arm_options(arm)
    xla = args.bf16_xla == "on" or (args.bf16_xla == "auto" and not cpu_has_bfloat16())
    bfloat16 = options.get("mixed_precision") == "bfloat16"
    overrides = {"dataset": args.dataset, "data_dir": args.data_dir, "cache_dir": args.cache_dir,
                 "seed": seed, "mixed_precision": "auto",
                 "jit_compile": "on" if bfloat16 and xla else "off", **options}
    if args.dataset == "lgg":
        overrides.update(LGG_BUDGET)
    if args.epochs:
        overrides["epochs"] = args.epochs
    keras.backend.clear_session()
    with tempfile.TemporaryDirectory(prefix="tfunet-precision-") as out:
        config = make_config({**overrides, "output_dir": out})
        results = train(config, verbose=0)
        meta = read_metadata(config.model_dir / "best_model.keras")
    return {"seed": seed, "arm": arm, "policy": meta["policy"], "xla": config.jit_compile == "on",
            "best_val_dice_pooled": round(meta["best"]["val_dice_pooled"], 4),
            "best_epoch": meta["best"]["epoch"], "epochs": config.epochs, "image_size": config.image_size,
            "base_filters": config.base_filters, "train_seconds": results["train_seconds"]}


def summarize(rows: list[dict], arms) -> dict:
    first, second = arms
    by = {(r["seed"], arm_of(r)): r["best_val_dice_pooled"] for r in rows}
    seeds = sorted({s for s, _ in by if all((s, a) in by for a in arms)})
    out = {a: round(statistics.mean(by[s, a] for s in seeds), 4) if seeds else None for a in arms}
    diffs = [by[s, second] - by[s, first] for s in seeds]
    out["paired_seeds"] = seeds
    if len(diffs) < 2:
        out["verdict"] = "needs at least two paired seeds"
        return out
    mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
    out.update(difference_mean=round(mean, 4), difference_sd=round(sd, 4))
    if mean < -0.01 and -mean > sd:
        out["verdict"] = f"{second} is worse: not a default"
    elif abs(mean) < sd:
        out["verdict"] = "no measurable difference"
    else:
        out["verdict"] = f"{second} - {first} = {mean:+.4f} (sd {sd:.4f})"
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    output = Path(args.output)
    rows = json.loads(output.read_text())["runs"] if output.is_file() else []
    done = {(r["seed"], arm_of(r)) for r in rows}
    machine = {"cpu": cpu_description()["model"], "cores": os.cpu_count(),
               "bfloat16_instructions": cpu_has_bfloat16()}
    for seed in args.seeds:
        for arm in args.arms:
            if (seed, arm) in done:
                continue
            rows.append(run_one(args, seed, arm))
            print(json.dumps(rows[-1]), file=sys.stderr)
            result = {"dataset": args.dataset, "machine": machine, "arms": args.arms, "runs": rows,
                      "summary": summarize(rows, args.arms)}
            tmp = output.with_name(f".{output.name}.tmp")
            tmp.write_text(json.dumps(result, indent=2) + "\n")
            os.replace(tmp, output)
    result = {"dataset": args.dataset, "machine": machine, "arms": args.arms, "runs": rows,
              "summary": summarize(rows, args.arms)}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
