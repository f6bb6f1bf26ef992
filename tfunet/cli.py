"""Console entry points: thin argparse layers over the library functions.

Heavy imports (TensorFlow) happen after the arguments are checked, so a typo is reported at
once. A `TfunetError` is printed as one line and exits with status 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from tfunet.config import DATASETS, UPSAMPLING, make_config
from tfunet.errors import TfunetError


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports errors in one line (no usage dump)."""

    def error(self, message):
        raise TfunetError(message)


def run_command(prog: str, body: Callable[[], object]) -> int:
    try:
        body()
    except TfunetError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0


def quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def train_parser() -> ArgumentParser:
    p = ArgumentParser(prog="tfunet-train",
                       description="Train a U-Net for brain-tumour segmentation (research use only). "
                                   "With no arguments it trains on the built-in synthetic dataset.")
    p.add_argument("--config", help="YAML or JSON file of options (flags win)")
    p.add_argument("--dataset", choices=DATASETS, help="synthetic (default) or lgg")
    p.add_argument("--data-dir", help="dataset folder (lgg: kaggle_3m, its parent, or the zip)")
    p.add_argument("--cache-dir", help="where prepared dataset shards go")
    p.add_argument("--split-file", help="JSON of patient lists {train, val, test}")
    p.add_argument("--num-patients", type=int, help="synthetic: number of pseudo-patients")
    p.add_argument("--slices-per-patient", type=int, help="synthetic: slices per pseudo-patient")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument("--image-size", type=int, help="model input size (divisible by 2**depth)")
    p.add_argument("--base-filters", type=int)
    p.add_argument("--depth", type=int)
    p.add_argument("--dropout", type=float)
    p.add_argument("--upsampling", choices=UPSAMPLING)
    p.add_argument("--no-batch-norm", dest="batch_norm", action="store_false", default=None)
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-epochs", type=int)
    p.add_argument("--bce-weight", type=float)
    p.add_argument("--dice-weight", type=float)
    p.add_argument("--threshold", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--jit-compile", choices=("auto", "on", "off"))
    p.add_argument("--output-dir", help="saved_models/ and logs/ are written under it (default .)")
    return p


def train_main(argv: list[str] | None = None) -> int:
    def body():
        args = vars(train_parser().parse_args(argv))
        config = make_config(args, config_file=args.pop("config"))
        quiet_tensorflow()
        from tfunet.train import train

        train(config)

    return run_command("tfunet-train", body)


if __name__ == "__main__":
    sys.exit(train_main())
