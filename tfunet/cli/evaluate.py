"""`tfunet-evaluate`: score a saved model on a split, draw the figures, tune post-processing.

Dataset, data folder, split and post-processing default to what the model's metadata says, so
`tfunet-evaluate --model saved_models/best_model.keras` is enough after `tfunet-train`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tfunet.cli import ENSEMBLE_HELP, ArgumentParser, run_command
from tfunet.config import DATASETS, JIT_COMPILE, MIXED_PRECISION
from tfunet.errors import TfunetError

# Flags that override one post-processing setting (tfunet.postprocess.Settings) for one run.
SETTINGS_FLAGS = ("threshold", "min_component_pixels", "largest_3d_component", "tta_flip")


def build_parser() -> ArgumentParser:
    from tfunet.postprocess import TUNE_METRICS  # NumPy and SciPy only: --help stays quick

    p = ArgumentParser(prog="tfunet-evaluate",
                       description="Score a trained U-Net on a split: the PyTorch original's table plus "
                                   "pooled, tumour-slice and per-patient 3-D Dice (research use only).")
    p.add_argument("--model", required=True, nargs="+",
                   help="a .keras file, or a SavedModel folder or .tflite file from tfunet-export" + ENSEMBLE_HELP)
    p.add_argument("--dataset", choices=DATASETS, help="default: the model's training dataset")
    p.add_argument("--data-dir", help="dataset folder (default: the model's training data folder)")
    p.add_argument("--cache-dir", help="where prepared dataset shards go")
    p.add_argument("--split-file", help="JSON of patient lists {train, val, test} (default: the model's split)")
    p.add_argument("--split", choices=("test", "val", "all"), default="test", help="what to score (test)")
    p.add_argument("--batch-size", type=int, help="slices per model call (default: the training batch size)")
    post = p.add_argument_group("post-processing (default: the model's metadata; overrides apply to this run)")
    post.add_argument("--threshold", type=float, help="probability threshold of a tumour pixel")
    post.add_argument("--min-component-pixels", type=int,
                      help="drop 2-D connected components smaller than this (0 = keep all)")
    post.add_argument("--largest-3d-component", dest="largest_3d_component", action="store_true",
                      default=None, help="keep only each patient's largest 3-D connected component")
    post.add_argument("--no-largest-3d-component", dest="largest_3d_component", action="store_false")
    post.add_argument("--tta", dest="tta_flip", action="store_true", default=None,
                      help="average the prediction over a horizontal flip")
    post.add_argument("--no-tta", dest="tta_flip", action="store_false")
    tune = p.add_argument_group("tuning on the validation split (the result is written to the model's metadata)")
    tune.add_argument("--tune-threshold", action="store_true",
                      help="choose the threshold on validation, with the other settings as they are (or given)")
    tune.add_argument("--tune", action="store_true",
                      help="measure flip TTA, threshold, small-component removal and largest 3-D component "
                           "one after another on validation; turn on each that helps")
    tune.add_argument("--tune-metric", choices=TUNE_METRICS, default="dice_pooled",
                      help="what tuning maximises (default: dice_pooled, as checkpointing does)")
    figs = p.add_argument_group("figures")
    figs.add_argument("--num-samples", type=int, default=3,
                      help="sample_<i>.png of that many seeded random slices (default 3, 0 = none)")
    figs.add_argument("--seed", type=int, help="picks the sample slices (default: the training seed)")
    figs.add_argument("--loss-curves", action="store_true",
                      help="redraw loss_curves.png from train_log.csv (the log folder's, else the training run's)")
    figs.add_argument("--no-architecture", dest="architecture", action="store_false",
                      help="skip model_architecture.png")
    run = p.add_argument_group("execution and output")
    run.add_argument("--mixed-precision", choices=MIXED_PRECISION,
                     help="dtype policy a .keras model computes in, as in training (default off = float32; "
                          "bfloat16 is fast on CPUs with AMX/AVX512-BF16)")
    run.add_argument("--precision", choices=("float32", "bfloat16"),
                     help="deprecated alias of --mixed-precision (float32 = off)")
    run.add_argument("--jit-compile", choices=JIT_COMPILE, default="auto",
                     help="XLA for the forward pass (auto: on GPUs, off on CPUs, as in training)")
    run.add_argument("--output-dir", default=".", help="reports and figures go to OUTPUT_DIR/logs (default .)")
    run.add_argument("--log-dir", help="write reports and figures here instead of OUTPUT_DIR/logs")
    run.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="a progress bar (default: only when stderr is a terminal)")
    run.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: list[str] | None = None) -> int:
    def body():
        args = build_parser().parse_args(argv)
        if args.tune and args.tune_threshold:
            raise TfunetError("--tune already tunes the threshold; pass one of --tune, --tune-threshold")
        mixed_precision = args.mixed_precision
        if args.precision is not None:
            print("tfunet-evaluate: warning: --precision is deprecated and will be removed in the next "
                  "release; use --mixed-precision (bfloat16 -> bfloat16, float32 -> off)", file=sys.stderr)
            mixed_precision = mixed_precision or {"float32": "off", "bfloat16": "bfloat16"}[args.precision]
        from tfunet.evaluate import evaluate_model, format_table

        result = evaluate_model(
            args.model, split=args.split, dataset=args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir,
            split_file=args.split_file, batch_size=args.batch_size,
            settings={k: getattr(args, k) for k in SETTINGS_FLAGS},
            tune="all" if args.tune else "threshold" if args.tune_threshold else None,
            tune_metric=args.tune_metric, num_samples=args.num_samples, seed=args.seed,
            loss_curves=args.loss_curves, architecture=args.architecture,
            mixed_precision=mixed_precision or "off", jit_compile=args.jit_compile,
            log_dir=args.log_dir or Path(args.output_dir) / "logs", progress=args.progress)
        print(format_table(result))
        print("tfunet-evaluate: wrote " + ", ".join(str(p) for p in result.written))

    return run_command("tfunet-evaluate", body)


if __name__ == "__main__":
    sys.exit(main())
