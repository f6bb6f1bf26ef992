"""`tfunet-export`: a trained .keras model as a serving SavedModel and/or TFLite (see `tfunet.export`)."""

from __future__ import annotations

import json
import sys

from tfunet.cli import ENSEMBLE_HELP, ArgumentParser, run_command


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="tfunet-export",
                       description="Export a trained model for TensorFlow Serving (SavedModel whose "
                                   "serving_default signature takes raw uint8 pixels of any size) "
                                   "and/or for devices (TFLite, built-in ops only).")
    p.add_argument("--model", required=True, nargs="+",
                   help="the trained .keras file (its .json metadata beside it)" + ENSEMBLE_HELP + "; "
                        "an ensemble exports as one SavedModel / one .tflite")
    p.add_argument("--saved-model", help="SavedModel folder to write, e.g. saved_models/serving/1")
    p.add_argument("--tflite", help=".tflite file to write (metadata goes beside it as .json)")
    # Checked by tfunet.export (which owns the list), so --help needs no TensorFlow.
    p.add_argument("--quantize", default="none",
                   help="TFLite: none (float32), float16 weights, dynamic (int8 weights) or int8 "
                        "(full-integer, calibrated on training images)")
    p.add_argument("--calibration-samples", type=int, default=100,
                   help="int8: training slices used for calibration (default 100)")
    p.add_argument("--data-dir", help="int8: the dataset folder, if it moved since training")
    return p


def main(argv: list[str] | None = None) -> int:
    def body():
        args = build_parser().parse_args(argv)
        from tfunet.export import export

        written = export(args.model, saved_model=args.saved_model, tflite=args.tflite,
                         quantize=args.quantize, calibration_samples=args.calibration_samples,
                         data_dir=args.data_dir)
        print(json.dumps(written, indent=2))

    return run_command("tfunet-export", body)


if __name__ == "__main__":
    sys.exit(main())
