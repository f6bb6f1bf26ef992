"""`tfunet-predict`'s file handling: image files in, masks and overlays out.

The model runs through `tfunet.predictor.load_predictor` (a .keras file, a SavedModel folder
or a .tflite file, all with the serving computation), so a mask does not depend on which file
produced it beyond the numerics of the format. The volume-level largest-3D-component step is
never applied here: one image is one slice.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tfunet.console import interactive
from tfunet.errors import TfunetError
from tfunet.fileio import atomic_path

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
# Files a folder holds beside its images that are not inputs: ground-truth masks (LGG's
# `_mask.tif`) and this command's own outputs.
OUTPUT_SUFFIXES = ("_mask", "_overlay")
OVERLAY_COLOUR = np.array([255, 0, 0], np.float32)
OVERLAY_ALPHA = 0.45


# --- files ------------------------------------------------------------------------------------

def read_image(path: Path) -> np.ndarray:
    """An image file as uint8 H x W x 3 (an alpha channel is dropped); TfunetError if unusable."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            image = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                image = np.asarray(im.convert("RGB") if im.mode == "P" else im)
    except Exception as exc:  # decoders raise many types; the first line says what is wrong
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TfunetError(f"cannot read {path}: {reason}") from None
    if image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    if image.ndim != 3 or image.shape[-1] != 3:
        raise TfunetError(f"{path}: shape {image.shape}; the model needs 3 channels "
                          "(pre-contrast, FLAIR, post-contrast)")
    if image.dtype != np.uint8:
        raise TfunetError(f"{path}: pixel type {image.dtype}; the model needs 8-bit (uint8) images")
    return image


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the predicted tumour tinted red."""
    tinted = image.astype(np.float32)
    region = mask.astype(bool)
    tinted[region] = (1 - OVERLAY_ALPHA) * tinted[region] + OVERLAY_ALPHA * OVERLAY_COLOUR
    return np.round(tinted).astype(np.uint8)


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _has_nifti(folder: Path) -> bool:
    from tfunet.volumes import is_nifti

    return any(p.is_file() and is_nifti(p) for p in folder.iterdir())


def collect_inputs(inputs, out_dir: Path) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Jobs (kind, input, output stem or folder) for files and folders, and a message for each
    input that yields nothing. kind "image": one image file. kind "case": a folder of NIfTI
    sequences, or one 4-D NIfTI file (see tfunet.volumes). Folders are searched recursively for
    images and for case folders; sub-folders are kept under out_dir."""
    from tfunet.volumes import is_nifti

    jobs, problems = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            if _has_nifti(item):
                jobs.append(("case", item, out_dir))
                continue
            entries = sorted(item.rglob("*"))  # one walk for images and case folders
            found = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                     and not p.stem.endswith(OUTPUT_SUFFIXES)]
            cases = [p for p in entries if p.is_dir() and _has_nifti(p)]
            if not found and not cases:
                problems.append(f"no .tif/.png/.jpg images or NIfTI cases in folder {item}")
            jobs += [("image", p, out_dir / p.relative_to(item).parent / p.stem) for p in found]
            jobs += [("case", p, out_dir / p.relative_to(item).parent) for p in cases]
        elif item.is_file():
            jobs.append(("case", item, out_dir) if is_nifti(item) else ("image", item, out_dir / item.stem))
        else:
            problems.append(f"input not found: {item}")
    return jobs, problems


def _predict_image(predictor, path: Path, stem: Path) -> None:
    image = read_image(path)
    mask = predictor.predict(image[None])["mask"][0, ..., 0]
    write_png(stem.with_name(f"{stem.name}_mask.png"), mask * np.uint8(255))
    write_png(stem.with_name(f"{stem.name}_overlay.png"), overlay(image, mask))


def _predict_case(predictor, case, out: Path, **options) -> str:
    from tfunet import volumes

    if isinstance(case, Path):
        case = volumes.case_from_path(case)
    return volumes.describe(volumes.predict_case(predictor, case, out, **options))


def predict_files(inputs, model: str | Path, out_dir: str | Path, progress: bool | None = None, *,
                  case=None, percentiles=None, rescale_8bit: bool = False, mosaic: bool = False) -> bool:
    """Predict every input and write the results under out_dir:
      * an image file: <name>_mask.png (0/255) and <name>_overlay.png;
      * a NIfTI case (a folder, a 4-D file, or `case`, a `tfunet.volumes.Case` from explicit
        files): <case>_mask.nii.gz and <case>_report.json, with a line on screen.
    An input that cannot be read or predicted is reported on one line and skipped. Returns True
    if any input failed. progress: a bar (default: when there are several inputs and stderr is
    a terminal). percentiles, rescale_8bit: the intensity rule for NIfTI cases, and mosaic a PNG
    of each case's tumour-bearing slices (tfunet.volumes.predict_case)."""
    from tqdm import tqdm

    from tfunet.volumes import PERCENTILES

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise TfunetError(f"--out must be a folder, but {out_dir} is a file")
    from tfunet.predictor import load_predictor

    predictor = load_predictor(model)
    jobs, problems = collect_inputs(inputs, out_dir)
    if case is not None:
        jobs.append(("case", case, out_dir))
    if progress is None:
        progress = interactive() and (len(jobs) > 1 or any(Path(item).is_dir() for item in inputs))
    for message in problems:
        print(f"tfunet-predict: {message}", file=sys.stderr)
    failed = bool(problems)
    for kind, source, target in tqdm(jobs, desc="predict", unit="input", disable=not progress, file=sys.stderr):
        try:
            if kind == "image":
                _predict_image(predictor, source, target)
            else:
                target.mkdir(parents=True, exist_ok=True)
                line = _predict_case(predictor, source, target, percentiles=percentiles or PERCENTILES,
                                     rescale_8bit=rescale_8bit, mosaic=mosaic)
                tqdm.write(f"tfunet-predict: {line}")
        except TfunetError as exc:
            tqdm.write(f"tfunet-predict: {exc}; skipped", file=sys.stderr)
            failed = True
    return failed
