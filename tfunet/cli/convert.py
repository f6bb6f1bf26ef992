"""`tfunet-convert`: data conversions (see `tfunet.volumes`).

    tfunet-convert lgg-to-nifti PATIENT_FOLDER... --out DIR [--spacing X Y Z]
"""

from __future__ import annotations

import sys
from pathlib import Path

from tfunet.cli import ArgumentParser, run_command


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="tfunet-convert", description="Convert data for tfunet (research use only).")
    sub = p.add_subparsers(dest="command", required=True)
    lgg = sub.add_parser("lgg-to-nifti", help="LGG patient folders as NIfTI cases in BraTS naming",
                         description="Write each LGG patient folder (TIFF slices) as DIR/<patient>/"
                                     "<patient>_{t1,flair,t1ce,seg}.nii.gz: uint8, axial slices in the "
                                     "canonical (P, L, S) orientation. The TIFFs carry no voxel size, so "
                                     "--spacing sets it (default 1 1 1 mm): volumes in mL are then nominal.")
    lgg.add_argument("patients", nargs="+", metavar="PATIENT_FOLDER")
    lgg.add_argument("--out", required=True, help="output folder")
    lgg.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), default=(1.0, 1.0, 1.0),
                     help="voxel size in mm: columns, rows, slices (default 1 1 1)")
    return p


def main(argv: list[str] | None = None) -> int:
    def body():
        args = build_parser().parse_args(argv)
        from tfunet.errors import TfunetError

        if min(args.spacing) <= 0:
            raise TfunetError(f"--spacing must be positive, got {' '.join(map(str, args.spacing))}")
        from tfunet.volumes import lgg_to_nifti

        failed = False
        for folder in map(Path, args.patients):
            try:
                print(f"tfunet-convert: wrote {lgg_to_nifti(folder, Path(args.out), args.spacing)}")
            except TfunetError as exc:
                print(f"tfunet-convert: {exc}; skipped", file=sys.stderr)
                failed = True
        return 1 if failed else 0

    return run_command("tfunet-convert", body)


if __name__ == "__main__":
    sys.exit(main())
