"""`tfunet-predict`: tumour masks and overlays for image files (see `tfunet.predict`)."""

from __future__ import annotations

import sys

from tfunet.cli import ENSEMBLE_HELP, ArgumentParser, run_command


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="tfunet-predict",
                       description="Predict tumour masks with a .keras model, a SavedModel folder or a "
                                   ".tflite file, for .tif/.png/.jpg slice images (writes <name>_mask.png "
                                   "and <name>_overlay.png) and for NIfTI cases: a folder of sequences in "
                                   "BraTS naming (*_t1, *_flair, *_t1ce or -t1n, -t2f, -t1c), a 4-D file, or "
                                   "--pre/--flair/--post (writes <case>_mask.nii.gz and <case>_report.json). "
                                   "Folders are searched recursively. Exit status 1 if any input failed. "
                                   "Research use only.")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, NIfTI files or folders")
    p.add_argument("--model", required=True, nargs="+",
                   help=".keras file, SavedModel folder or .tflite file" + ENSEMBLE_HELP)
    p.add_argument("--out", required=True, help="output folder")
    nifti = p.add_argument_group("a NIfTI case given sequence by sequence")
    nifti.add_argument("--pre", help="pre-contrast T1 (default: a copy of FLAIR)")
    nifti.add_argument("--flair", help="FLAIR (required with --pre/--post)")
    nifti.add_argument("--post", help="post-contrast T1 (default: a copy of FLAIR)")
    nifti.add_argument("--percentiles", type=float, nargs=2, metavar=("LOW", "HIGH"),
                       help="intensity rule for non-8-bit volumes: clip at these percentiles of the "
                            "non-zero voxels, then scale to 0-255 (default 0.5 99.5)")
    nifti.add_argument("--rescale-8bit", action="store_true",
                       help="apply that rule to 8-bit volumes too (default: they pass through unchanged)")
    nifti.add_argument("--mosaic", action="store_true",
                       help="also write <case>_mosaic.png: the tumour-bearing slices with the prediction")
    return p


def main(argv: list[str] | None = None) -> int:
    def body():
        args = build_parser().parse_args(argv)
        from tfunet.errors import TfunetError

        explicit = args.pre or args.flair or args.post
        if not args.inputs and not explicit:
            raise TfunetError("give INPUT files or folders, or a NIfTI case with --flair (and --pre, --post)")
        if args.percentiles and not 0 <= args.percentiles[0] < args.percentiles[1] <= 100:
            raise TfunetError(f"--percentiles must satisfy 0 <= LOW < HIGH <= 100, got {args.percentiles}")
        from tfunet.predict import predict_files
        from tfunet.volumes import case_from_files

        case = case_from_files(args.pre, args.flair, args.post) if explicit else None
        failed = predict_files(args.inputs, args.model, args.out, case=case,
                               percentiles=tuple(args.percentiles) if args.percentiles else None,
                               rescale_8bit=args.rescale_8bit, mosaic=args.mosaic)
        return 1 if failed else 0

    return run_command("tfunet-predict", body)


if __name__ == "__main__":
    sys.exit(main())
