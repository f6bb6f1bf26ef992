"""`tfunet-predict`: tumour masks and overlays for image files (see `tfunet.predict`)."""

from __future__ import annotations

import sys

from tfunet.cli import ArgumentParser, run_command


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="tfunet-predict",
                       description="Predict tumour masks for .tif/.png/.jpg images (files or folders, "
                                   "searched recursively) with a .keras model, a SavedModel folder or a "
                                   ".tflite file. Writes <name>_mask.png and <name>_overlay.png. "
                                   "Exit status 1 if any input failed. Research use only.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("--model", required=True, help=".keras file, SavedModel folder or .tflite file")
    p.add_argument("--out", required=True, help="output folder")
    return p


def main(argv: list[str] | None = None) -> int:
    def body():
        args = build_parser().parse_args(argv)
        from tfunet.predict import predict_files

        return 1 if predict_files(args.inputs, args.model, args.out) else 0

    return run_command("tfunet-predict", body)


if __name__ == "__main__":
    sys.exit(main())
