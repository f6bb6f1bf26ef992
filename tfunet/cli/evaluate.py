"""`tfunet-evaluate`: score a saved model on a split, draw the figures, tune post-processing.

Dataset, data folder, split and post-processing default to what the model's metadata says, so
`tfunet-evaluate --model saved_models/best_model.keras` is enough after `tfunet-train`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tfunet.cli import ArgumentParser, run_command
from tfunet.config import DATASETS, JIT_COMPILE

TUNE_STEPS = ("tta_flip", "threshold", "min_component_pixels", "largest_3d_component")


def build_parser() -> ArgumentParser:
    from tfunet.evaluate import PRECISIONS, TUNE_METRICS

    p = ArgumentParser(prog="tfunet-evaluate",
                       description="Score a trained U-Net on a split: the PyTorch original's table plus "
                                   "pooled, tumour-slice and per-patient 3-D Dice (research use only).")
    p.add_argument("--model", required=True,
                   help="a .keras file, or a SavedModel folder or .tflite file from tfunet-export")
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
    run.add_argument("--precision", choices=PRECISIONS, default="float32",
                     help="compute precision of a .keras model (bfloat16 is fast on CPUs with AMX/AVX512-BF16)")
    run.add_argument("--jit-compile", choices=JIT_COMPILE, default="auto",
                     help="XLA for the forward pass (auto: on GPUs, off on CPUs, as in training)")
    run.add_argument("--output-dir", default=".", help="reports and figures go to OUTPUT_DIR/logs (default .)")
    run.add_argument("--log-dir", help="write reports and figures here instead of OUTPUT_DIR/logs")
    run.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="a progress bar (default: only when stderr is a terminal)")
    run.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_command("tfunet-evaluate", lambda: _run(build_parser().parse_args(argv)))


def _settings(args, base):
    """`base` settings with the flags the user gave."""
    import dataclasses

    flags = ("threshold", "min_component_pixels", "largest_3d_component", "tta_flip")
    return dataclasses.replace(base, **{k: getattr(args, k) for k in flags if getattr(args, k) is not None})


def _run(args) -> int:
    from tfunet.errors import TfunetError

    if args.tune and args.tune_threshold:
        raise TfunetError("--tune already tunes the threshold; pass one of --tune, --tune-threshold")
    if args.threshold is not None and (args.tune or args.tune_threshold):
        raise TfunetError("--threshold and --tune/--tune-threshold both set the threshold; pass one")
    if args.tune and any(getattr(args, k) is not None for k in TUNE_STEPS):
        raise TfunetError("--tune chooses every post-processing setting; drop --min-component-pixels, "
                          "--[no-]largest-3d-component and --[no-]tta, or use --tune-threshold")
    if args.num_samples < 0:
        raise TfunetError(f"--num-samples must be >= 0, got {args.num_samples}")
    if args.batch_size is not None and args.batch_size < 1:
        raise TfunetError(f"--batch-size must be at least 1, got {args.batch_size}")

    from tfunet import evaluate as ev
    from tfunet import plots
    from tfunet.data.sources import config_for_model, splits_for_model
    from tfunet.metadata import read_metadata, update_metadata
    from tfunet.metrics import dice
    from tfunet.postprocess import Settings, tune
    from tfunet.train import use_jit

    model_path = Path(args.model)
    if not model_path.exists():
        raise TfunetError(f"model not found: {model_path}")
    tuning = args.tune or args.tune_threshold
    meta = read_metadata(model_path)
    config = config_for_model(meta, dataset=args.dataset, data_dir=args.data_dir,
                              cache_dir=args.cache_dir, split_file=args.split_file,
                              batch_size=args.batch_size, seed=args.seed, jit_compile=args.jit_compile)
    settings = _settings(args, Settings.from_metadata(meta))  # checks the values before any work
    log_dir = Path(args.log_dir) if args.log_dir else Path(args.output_dir) / "logs"
    train_log = _train_log(log_dir, config) if args.loss_curves else None
    scorer = ev.load_scorer(model_path, precision=args.precision, jit_compile=use_jit(config),
                            batch_size=config.batch_size)
    splits = splits_for_model(config, meta, need_split=tuning or args.split != "all")

    tuning_report = None
    if tuning:
        steps = TUNE_STEPS if args.tune else ("threshold",)
        start = Settings() if args.tune else settings
        print(f"tfunet-evaluate: tuning {', '.join(steps)} on {splits.num_slices('val')} validation slices "
              f"for {args.tune_metric}", file=sys.stderr)
        val = ev.collect_validation(scorer, splits, batch_size=config.batch_size,
                                    tta="tta_flip" in steps, progress=args.progress)
        chosen, steps_report = tune(val, ev.objective(args.tune_metric), steps=steps, start=start)
        tuning_report = {"objective": args.tune_metric, "split": "val", "steps": steps_report}
        update_metadata(model_path, **chosen.to_metadata(), tuning=tuning_report)
        settings = chosen
        for step in steps_report:
            scores = ", ".join(f"{c['value']}: {c['score']:.4f}" for c in step["scores"])
            print(f"  {step['step']}: chose {step['chosen']} (val {args.tune_metric} {scores})")
        print(f"tfunet-evaluate: wrote the chosen settings ({chosen.describe()}) to the metadata of "
              f"{model_path}")
        if args.split == "val":
            print("tfunet-evaluate: note: scoring the split the settings were tuned on overstates them",
                  file=sys.stderr)

    result = ev.evaluate(scorer, splits, args.split, settings, dataset_name=config.dataset,
                         batch_size=config.batch_size, num_samples=args.num_samples, seed=config.seed,
                         progress=args.progress)
    result.tuning = tuning_report
    print(ev.print_table(result))
    written = list(ev.write_reports(result, log_dir))

    for i, sample in enumerate(result.samples, start=1):
        slice_dice = dice(sample["prediction"][None], sample["truth"][None])
        title = f"{sample['patient_id']}, slice {sample['slice']}: Dice {slice_dice:.3f}"
        written.append(plots.plot_sample(sample["image"], sample["truth"], sample["prediction"],
                                         log_dir / f"sample_{i}.png", title))
    if args.architecture:
        if scorer.keras_model is None:
            print("tfunet-evaluate: note: model_architecture.png needs a .keras model", file=sys.stderr)
        else:
            drawn = plots.plot_architecture(scorer.keras_model, log_dir / "model_architecture.png")
            if drawn:
                written.append(drawn)
            else:
                print(f"tfunet-evaluate: note: {plots.ARCHITECTURE_HELP}", file=sys.stderr)
    if args.loss_curves:
        written.append(plots.plot_loss_curves(train_log, log_dir / "loss_curves.png"))
    print("tfunet-evaluate: wrote " + ", ".join(str(p) for p in written))
    return 0


def _train_log(log_dir: Path, config) -> Path:
    """train_log.csv of the log folder, else of the training run the metadata names."""
    from tfunet.errors import TfunetError

    for candidate in (log_dir / "train_log.csv", config.log_dir / "train_log.csv"):
        if candidate.is_file():
            return candidate
    raise TfunetError(f"--loss-curves: no train_log.csv in {log_dir} or {config.log_dir}")


if __name__ == "__main__":
    sys.exit(main())
