"""MRI volumes in NIfTI: reading a case, predicting it slice by slice, writing its mask and report.

A case is the three sequences the model was trained on, pre-contrast T1, FLAIR and
post-contrast T1, as NIfTI files (`.nii` or `.nii.gz`): a folder in BraTS naming
(`*_t1`, `*_flair`, `*_t1ce`, or BraTS 2023's `*-t1n`, `*-t2f`, `*-t1c`), explicit files, or one
4-D file whose last axis holds the three in that order. As in the LGG data, a missing pre- or
post-contrast sequence is replaced by a copy of FLAIR (the report says so); a missing FLAIR is
an error.

Geometry. Every sequence is reoriented to one canonical orientation before slicing: array axes
(row, column, slice) = (P, L, S) in nibabel's axis codes, i.e. axial slices as radiologists view
them (anterior at the top, the patient's right on the image's left), which is how the LGG slices
look. The sequences must share shape and affine (within `AFFINE_TOLERANCE`); nothing is
resampled silently. The mask is mapped back onto the input's own voxel grid and written with
the input's affine.

Intensities. Each sequence is mapped to the model's 0-255 input range by one per-volume rule:
clip at the 0.5th and 99.5th percentiles of its non-zero voxels, then scale linearly. The rule
takes zero as background (as skull-stripped and most scanner data have it), and it does not
change when the intensities are multiplied by a positive factor. Data that is already 8-bit
(dtype uint8, no intensity scaling in the header) passes through unchanged, so an LGG patient
stacked into NIfTI predicts exactly as its TIFF slices do (`rescale_8bit` applies the rule to
it too). Domain shift: the LGG
images tfunet's models are trained on are not skull-stripped; BraTS images are, and a model
trained on one may do worse on the other.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tfunet.errors import TfunetError

SEQUENCES = ("pre", "flair", "post")
CANONICAL = ("P", "L", "S")
AFFINE_TOLERANCE = 1e-3  # mm, per affine entry
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Name endings of each sequence, BraTS (2018-21) and BraTS 2023; "seg" and our own outputs are
# not inputs.
SEQUENCE_NAMES = {"pre": ("t1", "t1n"), "flair": ("flair", "t2f"), "post": ("t1ce", "t1c")}
OUTPUT_ENDINGS = ("_mask", "_seg", "-seg")
PERCENTILES = (0.5, 99.5)
DEFAULT_SPACING = (1.0, 1.0, 1.0)  # mm, for LGG slices, which carry no voxel size


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


@dataclasses.dataclass
class Case:
    """Where a case's sequences are: one path per sequence, or one 4-D path for all three."""

    name: str
    files: dict[str, Path]  # sequence -> path; a single "all" key for a 4-D file
    out_name: str


def find_case(folder: Path) -> Case:
    """The case in a folder of NIfTI files named the BraTS way (or holding one 4-D file)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p)
                   and not nifti_stem(p).lower().endswith(OUTPUT_ENDINGS))
    found: dict[str, Path] = {}
    for path in files:
        ending = re.split(r"[_-]", nifti_stem(path).lower())[-1]
        for sequence, names in SEQUENCE_NAMES.items():
            if ending in names:
                if sequence in found:
                    raise TfunetError(f"{folder}: two {sequence} sequences, {found[sequence].name} and {path.name}")
                found[sequence] = path
    if not found and len(files) == 1:
        return Case(folder.name, {"all": files[0]}, folder.name)
    if "flair" not in found:
        raise TfunetError(f"{folder}: no FLAIR sequence (a file ending in _flair or -t2f .nii/.nii.gz)")
    return Case(folder.name, found, folder.name)


def case_from_path(path: Path) -> Case:
    """The case a folder (BraTS naming) or a single 4-D NIfTI file holds."""
    if path.is_dir():
        return find_case(path)
    return Case(nifti_stem(path), {"all": path}, nifti_stem(path))


def case_from_files(pre: str | None, flair: str | None, post: str | None) -> Case:
    """The case given by --pre/--flair/--post."""
    if not flair:
        raise TfunetError("--flair is required with --pre/--post (a missing FLAIR cannot be replaced)")
    files = {k: Path(v) for k, v in (("pre", pre), ("flair", flair), ("post", post)) if v}
    stem = nifti_stem(files["flair"])
    return Case(stem, files, re.sub(r"[_-](flair|t2f)$", "", stem, flags=re.IGNORECASE) or stem)


# --- reading ------------------------------------------------------------------------------------

@dataclasses.dataclass
class Volume:
    data: np.ndarray  # canonical (P, L, S) orientation, uint8 after `to_uint8`
    affine: np.ndarray
    header: object
    path: Path
    passthrough: bool  # already 8-bit: no intensity rule applied


def _load(path: Path):
    import nibabel as nib

    if not path.is_file():
        raise TfunetError(f"{path}: file not found")
    try:
        image = nib.load(str(path))
        # nibabel reads lazily: a truncated .gz fails here, on data access, not in nib.load.
        raw = np.asarray(image.dataobj)
    except Exception as exc:  # nibabel and gzip raise many kinds of errors on broken files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TfunetError(f"{path}: not a readable NIfTI file ({reason})") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise TfunetError(f"{path}: not a NIfTI file ({type(image).__name__})")
    return image, raw


def _reorient(data: np.ndarray, affine: np.ndarray, to_canonical: bool = True) -> np.ndarray:
    """`data` on the grid `affine` describes -> the canonical orientation, or back."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    own, canonical = io_orientation(affine), axcodes2ornt(CANONICAL)
    return apply_orientation(data, ornt_transform(own, canonical) if to_canonical else ornt_transform(canonical, own))


def _check_values(data: np.ndarray, path: Path) -> None:
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise TfunetError(f"{path}: the image data holds NaN or infinite values")
    if data.size == 0 or data.min() == data.max():
        raise TfunetError(f"{path}: the volume is constant ({data.flat[0] if data.size else 'empty'}): no image in it")


def to_uint8(data: np.ndarray, passthrough: bool, percentiles=PERCENTILES) -> np.ndarray:
    """The per-volume intensity rule (module docstring): uint8 data unchanged, anything else
    clipped at `percentiles` of its non-zero voxels and scaled linearly to 0..255."""
    if passthrough:
        return data
    values = data[data != 0]
    low, high = np.percentile(values, percentiles)
    if high <= low:
        low, high = float(values.min()), float(values.max())
    scaled = (np.clip(data.astype(np.float64), low, high) - low) / (high - low) * 255.0
    return np.round(scaled).astype(np.uint8)


def read_sequences(case: Case, percentiles=PERCENTILES, rescale_8bit: bool = False
                   ) -> tuple[dict[str, Volume], list[str]]:
    """The case's three sequences, canonical and uint8, and the names of those replaced by FLAIR.
    rescale_8bit: apply the intensity rule to 8-bit data too, instead of passing it through."""
    volumes: dict[str, Volume] = {}
    for key, path in case.files.items():
        image, raw = _load(path)
        expected = 4 if key == "all" else 3
        if raw.ndim != expected or (key == "all" and raw.shape[-1] != 3):
            want = "a 4-D volume with the three sequences on its last axis" if key == "all" else "a 3-D volume"
            raise TfunetError(f"{path}: {raw.ndim}-D image of shape {raw.shape}; expected {want}")
        slope, inter = image.dataobj.slope, image.dataobj.inter
        scaled = (not np.isnan(slope) and slope != 1) or (not np.isnan(inter) and inter != 0)
        passthrough = raw.dtype == np.uint8 and not scaled and not rescale_8bit
        data = raw if passthrough else np.asarray(image.get_fdata(dtype=np.float32))
        parts = {k: data[..., i] for i, k in enumerate(SEQUENCES)} if key == "all" else {key: data}
        for name, part in parts.items():
            _check_values(part, path)
            canonical = _reorient(part, image.affine)
            volumes[name] = Volume(to_uint8(canonical, passthrough, percentiles), image.affine, image.header,
                                   path, passthrough)
    reference = volumes["flair"]
    for name, volume in volumes.items():
        if volume.data.shape != reference.data.shape or not np.allclose(
                volume.affine, reference.affine, atol=AFFINE_TOLERANCE):
            raise TfunetError(f"{volume.path} and {reference.path}: the sequences' shapes or affines disagree "
                              f"({volume.data.shape} vs {reference.data.shape}); resample them onto one grid first")
    replaced = [name for name in SEQUENCES if name not in volumes]
    for name in replaced:
        volumes[name] = reference
    return volumes, replaced


# --- predicting and writing ---------------------------------------------------------------------

def predict_case(predictor, case: Case, out_dir: Path, batch_size: int = 16,
                 percentiles=PERCENTILES, rescale_8bit: bool = False, mosaic: bool = False) -> dict:
    """Predict one case and write `<case>_mask.nii.gz` and `<case>_report.json` to out_dir.

    Slices are predicted in batches through the predictor's serving computation (resize to the
    model size and back, flip TTA, threshold, small components scaled by area), then the
    volume-level step the metadata asks for (largest 3-D component). With `mosaic`, also
    `<case>_mosaic.png`: the tumour-bearing slices with the prediction overlaid. Returns the report."""
    import nibabel as nib
    from scipy import ndimage

    from tfunet.fileio import atomic_path, write_json
    from tfunet.postprocess import Settings, patient_mask

    volumes, replaced = read_sequences(case, percentiles, rescale_8bit)
    images = np.stack([volumes[name].data for name in SEQUENCES], axis=-1)  # (P, L, S, 3)
    slices = np.moveaxis(images, 2, 0)  # (S, P, L, 3): axial slices, anterior up
    masks = [predictor.predict(slices[i:i + batch_size])["mask"][..., 0] for i in range(0, len(slices), batch_size)]
    settings = Settings.from_metadata(predictor.meta)
    mask = patient_mask(np.concatenate(masks).astype(bool), settings)  # (S, P, L)
    reference = volumes["flair"]
    grid = _reorient(np.moveaxis(mask, 0, 2), reference.affine, to_canonical=False).astype(np.uint8)

    header = reference.header.copy()
    out = nib.Nifti1Image(grid, reference.affine, header)
    out.set_data_dtype(np.uint8)
    out.header.set_slope_inter(1.0, 0.0)  # no intensity scaling copied from the input
    mask_path = out_dir / f"{case.out_name}_mask.nii.gz"
    with atomic_path(mask_path) as tmp:
        nib.save(out, str(tmp))

    voxel_mm3 = float(np.prod(reference.header.get_zooms()[:3]))
    _, components = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    meta = predictor.meta
    report = {
        "case": case.name,
        "inputs": {name: str(path) for name, path in case.files.items()},
        "sequences_replaced_by_flair": replaced,
        "shape": list(grid.shape),
        "voxel_size_mm": [float(z) for z in reference.header.get_zooms()[:3]],
        "tumour_voxels": int(mask.sum()),
        "tumour_volume_ml": round(int(mask.sum()) * voxel_mm3 / 1000.0, 3),
        "components_3d": int(components),
        "axial_slices_with_tumour": [int(i) for i in np.flatnonzero(mask.any(axis=(1, 2)))],
        "slice_axis": "canonical S (inferior to superior), 0-based",
        "intensity": "unchanged (already 8-bit)" if all(v.passthrough for v in volumes.values()) else
                     f"per volume: clipped at the {percentiles[0]}th and {percentiles[1]}th percentiles "
                     f"of the non-zero voxels, scaled linearly to 0-255",
        "model": {"path": str(predictor.path), "tfunet_version": meta.get("tfunet_version"),
                  "threshold": settings.threshold, "postprocess": settings.to_metadata()["postprocess"]},
        "mask": str(mask_path),
    }
    if mosaic:
        from tfunet.plots import plot_mosaic

        report["mosaic"] = str(plot_mosaic(slices[..., 1], mask, out_dir / f"{case.out_name}_mosaic.png",
                                           f"{case.name}: FLAIR, prediction in red (anterior up, "
                                           f"patient's right on the left)"))
    write_json(out_dir / f"{case.out_name}_report.json", report)
    return report


def describe(report: dict) -> str:
    """The report's one line on screen."""
    replaced = report["sequences_replaced_by_flair"]
    note = f"; {', '.join(replaced)} replaced by FLAIR" if replaced else ""
    return (f"{report['case']}: tumour {report['tumour_volume_ml']} mL in {report['components_3d']} "
            f"component(s) on {len(report['axial_slices_with_tumour'])} slice(s){note} -> {report['mask']}")


# --- LGG slices as NIfTI --------------------------------------------------------------------------

def lgg_patient_volumes(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """An LGG patient folder's slices stacked in slice order: images (S, H, W, 3) uint8 and
    masks (S, H, W) uint8 0/1."""
    from tfunet.data.lgg import SLICE_NAME, BadFile, decode_tiff

    if not folder.is_dir():
        raise TfunetError(f"{folder}: not a folder of LGG slices")
    images, masks = {}, {}
    for path in folder.iterdir():
        match = SLICE_NAME.match(path.name)
        if match and not path.name.startswith("."):
            (masks if match["mask"] else images)[int(match["k"])] = path
    if not images or images.keys() != masks.keys():
        raise TfunetError(f"{folder}: expected LGG slices <patient>_<k>.tif, each with <patient>_<k>_mask.tif")
    try:
        image = np.stack([decode_tiff(images[k].read_bytes(), str(images[k])) for k in sorted(images)])
        mask = np.stack([decode_tiff(masks[k].read_bytes(), str(masks[k])) for k in sorted(masks)])
    except BadFile as exc:
        raise TfunetError(str(exc)) from None
    mask = mask.reshape(mask.shape[:3])
    return image, (mask > 0).astype(np.uint8)


def canonical_affine(spacing: Sequence[float] = DEFAULT_SPACING) -> np.ndarray:
    """The affine of an array already in the canonical (P, L, S) orientation, in RAS+ world
    coordinates: rows run posterior (-y), columns to the left (-x), slices up (+z)."""
    sx, sy, sz = spacing
    return np.array([[0.0, -sx, 0, 0], [-sy, 0, 0, 0], [0, 0, sz, 0], [0, 0, 0, 1]])


def lgg_to_nifti(folder: Path, out_dir: Path, spacing: Sequence[float] = DEFAULT_SPACING) -> Path:
    """Write an LGG patient folder as a NIfTI case in BraTS naming:
    out_dir/<patient>/<patient>_{t1,flair,t1ce,seg}.nii.gz, uint8, canonical orientation."""
    import nibabel as nib

    from tfunet.fileio import atomic_path

    images, mask = lgg_patient_volumes(folder)
    affine = canonical_affine(spacing)
    case_dir = out_dir / folder.name
    case_dir.mkdir(parents=True, exist_ok=True)
    arrays = {"t1": images[..., 0], "flair": images[..., 1], "t1ce": images[..., 2], "seg": mask}
    for suffix, array in arrays.items():
        image = nib.Nifti1Image(np.ascontiguousarray(np.moveaxis(array, 0, 2)), affine)  # (S,H,W) -> (P,L,S)
        image.set_data_dtype(np.uint8)
        image.header.set_xyzt_units("mm")
        with atomic_path(case_dir / f"{folder.name}_{suffix}.nii.gz") as tmp:
            nib.save(image, str(tmp))
    return case_dir
