"""`tfunet-train`: train a U-Net (see `tfunet.train.train`)."""

from __future__ import annotations

import sys

from tfunet.cli import ArgumentParser, run_command
from tfunet.config import (AUGMENTATIONS, DATASETS, FOREGROUND_SAMPLING, JIT_COMPILE, MIXED_PRECISION, RECIPES, STRATEGIES,
                           UPSAMPLING, make_config)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="tfunet-train",
                       description="Train a U-Net for brain-tumour segmentation (research use only). "
                                   "With no arguments it trains on the built-in synthetic dataset.")
    p.add_argument("--config", help="YAML or JSON file of options (flags win)")
    p.add_argument("--dataset", choices=DATASETS, help="synthetic (default) or lgg")
    p.add_argument("--recipe", choices=sorted(RECIPES),
                   help="named settings over the dataset's defaults: original = the PyTorch original's "
                        "recipe (the lgg default); fast = accuracy per CPU-hour (docs/training.md). "
                        "Flags still override it")
    p.add_argument("--data-dir", help="dataset folder (lgg: kaggle_3m, its parent, or the zip)")
    p.add_argument("--cache-dir", help="where prepared dataset shards go")
    p.add_argument("--split-file", help="JSON of patient lists {train, val, test}, or {folds, test} "
                                        "for cross-validation (see docs/data.md)")
    p.add_argument("--folds", type=int, nargs="?", const=5,
                   help="K-fold cross-validation by patient (K defaults to 5): fold models in "
                        "saved_models/fold_<k>/, the CV report in logs/cv_metrics.md")
    p.add_argument("--num-patients", type=int, help="synthetic: number of pseudo-patients")
    p.add_argument("--slices-per-patient", type=int, help="synthetic: slices per pseudo-patient")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument("--image-size", type=int, help="model input size (divisible by 2**depth)")
    p.add_argument("--base-filters", type=int)
    p.add_argument("--depth", type=int)
    p.add_argument("--dropout", type=float)
    p.add_argument("--upsampling", choices=UPSAMPLING)
    p.add_argument("--deep-supervision", action="store_true", default=None,
                   help="auxiliary losses at 1/2 and 1/4 resolution while training (the saved model "
                        "has one output)")
    p.add_argument("--no-deep-supervision", dest="deep_supervision", action="store_false")
    p.add_argument("--coarse-size", type=int,
                   help="resolution schedule: train the first --coarse-epochs at this size, the rest at --image-size")
    p.add_argument("--coarse-epochs", type=int)
    p.add_argument("--fine-lr", type=float,
                   help="resolution schedule: restart the cosine at this peak for the --image-size epochs "
                        "(default 0: one cosine over all epochs)")
    p.add_argument("--no-batch-norm", dest="batch_norm", action="store_false", default=None)
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-epochs", type=int)
    p.add_argument("--bce-weight", type=float)
    p.add_argument("--dice-weight", type=float)
    p.add_argument("--dice-per-slice", action="store_true", default=None,
                   help="soft Dice of the loss per slice, averaged (default: pooled over the batch, as the original)")
    p.add_argument("--threshold", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--skip-bad", action="store_true", default=None,
                   help="lgg: skip unreadable or invalid files with a warning instead of failing")
    p.add_argument("--augment", dest="augment", action="store_true", default=None,
                   help="augment training slices (default: on for lgg, off for synthetic)")
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--augmentation", choices=AUGMENTATIONS,
                   help="basic (default: flips, small rotations and scaling, mild intensity jitter) or "
                        "nnunet (wide rotations and scaling, noise, blur, low resolution, wider gamma)")
    p.add_argument("--foreground-share", type=float,
                   help="draw this share of every training batch from slices with tumour (nnU-Net: 0.33; "
                        "default 0: batches as they come)")
    p.add_argument("--foreground-sampling", choices=FOREGROUND_SAMPLING,
                   help="how --foreground-share draws: slice (default: any tumour slice, so large tumours "
                        "dominate) or patient (a patient with tumour first, then one of its tumour slices); "
                        "needs --foreground-share")
    p.add_argument("--jit-compile", choices=JIT_COMPILE, help="XLA: auto = on GPUs, off on CPUs")
    p.add_argument("--mixed-precision", choices=MIXED_PRECISION,
                   help="auto = float16 on CUDA GPUs, bfloat16 on CPUs with AMX/AVX512-BF16, else off")
    p.add_argument("--strategy", choices=STRATEGIES, help="tf.distribute strategy")
    p.add_argument("--steps-per-execution", type=int,
                   help="training steps per call into the TensorFlow graph (default 1; see docs/performance.md)")
    p.add_argument("--validate-every", type=int, metavar="K",
                   help="validate every K-th epoch, and always the first and the last (default 1: every "
                        "epoch); the other epochs log NA in the CSV. Saves most of the validation time of "
                        "cross-validation, whose held-out folds only draw curves")
    p.add_argument("--data-threads", type=int,
                   help="give the input pipelines a thread pool of this size (default 0: tf.data's own "
                        "choice; see docs/performance.md)")
    p.add_argument("--no-cache-slices", dest="cache_slices", action="store_false", default=None,
                   help="read the training and validation slices from the dataset every epoch instead of "
                        "keeping them in memory after the first (256x256: about 0.26 MB a slice)")
    p.add_argument("--fused-batch-norm", action="store_true", default=None,
                   help="batch norm as one TensorFlow op (tfunet.layers) instead of Keras's layer: same "
                        "weights and math, 1.3-1.5x faster training steps on the CPU measured; opt-in, "
                        "see docs/performance.md")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="enable op determinism for exact reruns (slower)")
    p.add_argument("--output-dir", help="saved_models/ and logs/ are written under it (default .)")
    return p


def main(argv: list[str] | None = None) -> int:
    def body():
        args = vars(build_parser().parse_args(argv))
        config = make_config(args, config_file=args.pop("config"))
        from tfunet.train import train

        train(config)

    return run_command("tfunet-train", body)


if __name__ == "__main__":
    sys.exit(main())
