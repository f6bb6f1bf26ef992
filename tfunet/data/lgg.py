"""The LGG MRI Segmentation dataset (Buda et al. 2019): finding it, reading and checking its TIFFs.

Layout: `kaggle_3m/TCGA_<inst>_<id>_<date>/TCGA_<inst>_<id>_<date>_<k>.tif` (256x256x3 uint8:
pre-contrast, FLAIR, post-contrast) with `..._<k>_mask.tif` (256x256, 0/255) beside it. The data
may be given as the `kaggle_3m` folder, a folder above it, or the zip archive as downloaded from
Kaggle, which holds the data twice (`kaggle_3m/` and `lgg-mri-segmentation/kaggle_3m/`): the
shallowest copy is used, so no patient is counted twice. Zips are read in place, never unpacked.

The TIFFs are decoded once into TFDS shards by `tfunet.data.lgg_tfds`, whose `LGGSource` serves
them as a slice source. Imports run one way: lgg_tfds imports this module, never the reverse.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import re
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import tifffile

from tfunet.errors import TfunetError

ROOT_NAME = "kaggle_3m"
IMAGE_SHAPE = (256, 256, 3)
# <patient folder>/<name>_<k>.tif or <name>_<k>_mask.tif
SLICE_NAME = re.compile(r"^.+_(?P<k>\d+)(?P<mask>_mask)?\.tiff?$", re.IGNORECASE)
SLICE_PATTERN = "TCGA_*/<patient>_<k>.tif with <patient>_<k>_mask.tif"
log = logging.getLogger(__name__)


class BadFile(Exception):
    """One input file that cannot be used; `str()` names the file and the reason."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclasses.dataclass(frozen=True)
class Location:
    """Where the `kaggle_3m` files are: a folder, or a folder-like prefix inside a zip."""

    path: Path
    prefix: str = ""  # zip member prefix of the kaggle_3m root ("" for folders)

    @property
    def is_zip(self) -> bool:
        return self.path.is_file()

    def __str__(self) -> str:
        return f"{self.path}:{self.prefix.rstrip('/')}" if self.is_zip else str(self.path)

    def display(self, name: str) -> str:
        """A file's name as shown in messages."""
        return f"{self.path}:{self.prefix}{name}" if self.is_zip else str(self.path / name)

    def names(self) -> list[str]:
        """Files as `<patient folder>/<file>`, relative to the kaggle_3m root."""
        if self.is_zip:
            with zipfile.ZipFile(self.path) as zf:
                members = [n[len(self.prefix):] for n in zf.namelist()
                           if n.startswith(self.prefix) and not n.endswith("/")]
        else:
            members = [p.relative_to(self.path).as_posix() for p in self.path.glob("*/*") if p.is_file()]
        return sorted(m for m in members if len(PurePosixPath(m).parts) == 2)

    def fingerprint(self) -> str:
        """Changes when any file's name, size or content stamp (mtime, zip CRC) changes, so
        prepared shards are reused exactly while the data is unchanged."""
        digest = hashlib.sha256(str(self.path.resolve()).encode() + self.prefix.encode())
        if self.is_zip:
            with zipfile.ZipFile(self.path) as zf:
                for info in sorted(zf.infolist(), key=lambda i: i.filename):
                    if info.filename.startswith(self.prefix):
                        digest.update(f"{info.filename}\0{info.file_size}\0{info.CRC}\n".encode())
        else:
            for name in self.names():
                stat = (self.path / name).stat()
                digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]

    def reader(self) -> "Reader":
        return Reader(self)


class Reader:
    """Reads files of a location; one open zip shared by threads (zipfile reads are locked)."""

    def __init__(self, location: Location):
        self.location = location
        self._zip = zipfile.ZipFile(location.path) if location.is_zip else None

    def read(self, name: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(self.location.prefix + name)
        return (self.location.path / name).read_bytes()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


@dataclasses.dataclass(frozen=True)
class SliceFiles:
    patient_id: str
    slice: int
    image: str  # relative to the kaggle_3m root
    mask: str


def _zip_root(path: Path) -> str | None:
    """The shallowest kaggle_3m prefix inside a zip ("" when patient folders are at the top)."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    roots = set()
    for name in names:
        parts = PurePosixPath(name).parts
        if ROOT_NAME in parts[:-1]:
            depth = parts.index(ROOT_NAME)
            roots.add("/".join(parts[:depth + 1]) + "/")
        elif len(parts) == 2 and _is_tiff(name):
            roots.add("")
    return min(roots, key=lambda r: (r.count("/"), r)) if roots else None


def _is_tiff(name: str) -> bool:
    return name.lower().endswith((".tif", ".tiff"))


def _has_patient_folders(path: Path) -> bool:
    return any(child.is_dir() and any(_is_tiff(f.name) for f in child.iterdir())
               for child in path.iterdir())


def locate(data_dir: str | Path) -> Location:
    """Find the kaggle_3m root in a folder, its parent, or a (downloaded) zip archive."""
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise TfunetError(f"data folder not found: {path}")
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise TfunetError(f"{path} is neither a folder nor a zip archive")
        prefix = _zip_root(path)
        if prefix is None:
            raise TfunetError(f"no {ROOT_NAME} folder in zip archive {path}")
        return Location(path, prefix)
    if path.name == ROOT_NAME or _has_patient_folders(path):
        return Location(path)
    for pattern in (ROOT_NAME, f"*/{ROOT_NAME}", f"*/*/{ROOT_NAME}"):
        found = sorted(p for p in path.glob(pattern) if p.is_dir())
        if found:
            return Location(found[0])
    for archive in sorted(path.glob("*.zip")):
        if zipfile.is_zipfile(archive) and _zip_root(archive) is not None:
            return locate(archive)
    if not any(path.iterdir()):
        raise TfunetError(f"data folder is empty: {path}")
    raise TfunetError(f"no {ROOT_NAME} folder, patient folders or LGG zip archive in {path}")


def list_slices(location: Location) -> tuple[list[SliceFiles], list[BadFile]]:
    """Pair every slice image with its mask; names that do not pair up are returned as bad files.

    Hidden files (e.g. macOS `._*`) and files other than TIFFs (README, data.csv) are ignored.
    """
    images: dict[tuple[str, int], str] = {}
    masks: dict[tuple[str, int], str] = {}
    bad: list[BadFile] = []
    for name in location.names():
        folder, file = name.split("/")
        if folder.startswith((".", "__MACOSX")) or file.startswith(".") or not _is_tiff(file):
            continue
        match = SLICE_NAME.match(file)
        if not match:
            bad.append(BadFile(location.display(name),
                               "unexpected file name (expected <patient>_<k>.tif or <patient>_<k>_mask.tif)"))
            continue
        key = (folder, int(match["k"]))
        (masks if match["mask"] else images)[key] = name
    slices = []
    for key in sorted(images.keys() | masks.keys()):
        if key not in masks:
            stem = PurePosixPath(images[key]).stem
            bad.append(BadFile(location.display(images[key]), f"missing mask {stem}_mask.tif"))
        elif key not in images:
            bad.append(BadFile(location.display(masks[key]), "mask without an image"))
        else:
            slices.append(SliceFiles(key[0], key[1], images[key], masks[key]))
    return slices, sorted(bad, key=lambda b: b.path)


def decode_tiff(data: bytes, path: str) -> np.ndarray:
    """One TIFF as an array; a truncated or unreadable file raises `BadFile`."""
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            if not tif.pages:
                raise BadFile(path, "truncated or unreadable TIFF (no image in it)")
            page = tif.pages[0]
            if max((o + n for o, n in zip(page.dataoffsets, page.databytecounts)), default=0) > len(data):
                raise BadFile(path, "truncated TIFF (image data runs past the end of the file)")
            return page.asarray()
    except BadFile:
        raise
    except Exception as exc:  # tifffile raises many kinds of errors on broken files
        raise BadFile(path, f"unreadable TIFF ({type(exc).__name__}: {exc})") from None


def read_slice(reader: Reader, files: SliceFiles) -> tuple[np.ndarray, np.ndarray]:
    """Decode and check one slice: image uint8 (256, 256, 3), mask uint8 (256, 256, 1) in {0, 1}."""
    location = reader.location
    image_path, mask_path = location.display(files.image), location.display(files.mask)
    image = decode_tiff(reader.read(files.image), image_path)
    if image.shape != IMAGE_SHAPE or image.dtype != np.uint8:
        raise BadFile(image_path, f"image is {image.dtype} {'x'.join(map(str, image.shape))}, "
                                  f"expected uint8 {'x'.join(map(str, IMAGE_SHAPE))}")
    mask = decode_tiff(reader.read(files.mask), mask_path)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.shape != image.shape[:2]:
        raise BadFile(mask_path, f"mask shape {'x'.join(map(str, mask.shape))} is not the image's "
                                 f"height x width {image.shape[0]}x{image.shape[1]}")
    if np.any((mask != 0) & (mask != 255)):
        values = np.unique(mask)
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
        raise BadFile(mask_path, f"mask values must be 0 or 255, found {shown}")
    return image, (mask == 255).astype(np.uint8)[..., None]


def report_bad(bad: list[tuple[str, str]], skip_bad: bool) -> None:
    """Fail on the first bad file, or, with --skip-bad, warn once listing every skipped file."""
    if not bad:
        return
    if not skip_bad:
        path, reason = bad[0]
        more = f" (and {len(bad) - 1} more bad file(s))" if len(bad) > 1 else ""
        raise TfunetError(f"{path}: {reason}{more}; pass --skip-bad to skip bad files")
    listing = "".join(f"\n  {path}: {reason}" for path, reason in bad)
    log.warning("skipped %d bad LGG file(s):%s", len(bad), listing)

