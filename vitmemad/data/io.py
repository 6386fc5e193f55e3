"""Reading image and mask files robustly.

Every file read goes through here so that truncated, corrupt, oversized or oddly-encoded
files fail with a DatasetError naming the file, instead of a bare PIL traceback deep in a
DataLoader worker. PIL's decompression-bomb protection stays on.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import DatasetError

log = logging.getLogger(__name__)

#: File suffixes treated as images (compared case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

_warned_alpha = False
_warned_deep = False
_DEEP_KEY = "vitmemad.16bit_channels"


def is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name (deterministic order)."""
    return sorted((p for p in Path(folder).iterdir() if is_image_file(p)), key=lambda p: p.name)


def find_mask(mask_dir: Path, stem: str) -> Path | None:
    """The mask for image `stem` in `mask_dir`: `<stem>.png`, `<stem>_mask.png`, then other suffixes."""
    names = [f"{stem}.png", f"{stem}_mask.png"]
    names += [f"{stem}{sfx}{ext}" for sfx in ("", "_mask") for ext in IMAGE_EXTENSIONS if ext != ".png"]
    for name in names:
        candidate = Path(mask_dir) / name
        if candidate.is_file():
            return candidate
    return None


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Any failure to read ``path`` inside the block becomes a DatasetError naming the file."""
    if not path.is_file():
        raise DatasetError(f"Image file not found: {path}")
    try:
        with warnings.catch_warnings():
            # PIL only *warns* between MAX_IMAGE_PIXELS and twice that; treat it as an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DatasetError(
            f"Refusing to read {path}: too many pixels (decompression-bomb limit "
            f"Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS}): {exc}"
        ) from exc
    except Exception as exc:  # UnidentifiedImageError, OSError (truncated), SyntaxError, ...
        raise DatasetError(f"Cannot read image {path}: {type(exc).__name__}: {exc}") from exc


#: JPEG (lossy) masks are binarised at this level, not at > 0: compression noise around edges would count as defect
LOSSY_MASK_THRESHOLD = 128
LOSSY_FORMATS = ("JPEG", "MPO", "WEBP")
#: EXIF orientations that swap width and height
_TRANSPOSED = (5, 6, 7, 8)


def _open_checked(path: Path) -> Image.Image:
    """Open and fully decode `path` upright (its EXIF orientation applied, as viewers show it); any failure becomes
    a DatasetError naming the file."""
    path = Path(path)
    with _reading(path):
        img = Image.open(path)
        fmt = img.format
        # Pillow reads 16-bit-per-channel colour PNGs (raw mode "RGB;16B") as 8-bit RGB: remember it
        deep = any(";16" in str(getattr(tile, "args", "")) for tile in img.tile)
        img.load()  # decode now: catches truncated files (LOAD_TRUNCATED_IMAGES stays off)
        img = ImageOps.exif_transpose(img)  # a no-op without an orientation tag
        img.format = fmt
        if deep:
            img.info[_DEEP_KEY] = True
    return img


def _to_8bit_gray(img: Image.Image) -> Image.Image:
    """Integer/float single-channel images → 8-bit, scaling 16-bit data by 255/65535."""
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return Image.fromarray(arr)
    if img.mode.startswith("I;16") or arr.dtype == np.uint16:
        out = arr.astype(np.float64) / 257.0
    elif img.mode == "F":
        out = arr.astype(np.float64) * (255.0 if arr.max(initial=0) <= 1.0 else 1.0)
    else:  # mode "I" (32-bit): PNG 16-bit data often arrives like this
        out = arr.astype(np.float64)
        if out.max(initial=0) > 255:
            out = out / 257.0
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def to_rgb(img: Image.Image, path: Path | str = "<image>") -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (gray → 3 equal channels, alpha dropped)."""
    global _warned_alpha, _warned_deep
    mode = img.mode
    if img.info.get(_DEEP_KEY) and not _warned_deep:
        log.warning("Converting %s (16 bits per channel) to 8-bit RGB (and any later such images).", path)
        _warned_deep = True
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        if not _warned_alpha:
            log.warning("Dropping the alpha channel of %s (and of any later RGBA images).", path)
            _warned_alpha = True
        return img.convert("RGB")
    if mode.startswith("I") or mode == "F":
        if not _warned_deep:
            log.warning("Converting %s (mode %s, more than 8 bits per pixel) to 8-bit RGB "
                        "(and any later such images).", path, mode)
            _warned_deep = True
        return _to_8bit_gray(img).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_image(path: Path | str) -> Image.Image:
    """Decode an image file to an RGB PIL image; raise DatasetError naming the file on failure."""
    img = _open_checked(Path(path))
    try:
        return to_rgb(img, path)
    except Exception as exc:
        raise DatasetError(f"Cannot convert image {path} (mode {img.mode}) to RGB: {exc}") from exc


def mask_values(path: Path | str) -> tuple[np.ndarray, bool]:
    """A mask's raw levels as a (H, W) array (channels: their max; alpha ignored), and whether its format is lossy."""
    img = _open_checked(Path(path))
    lossy = img.format in LOSSY_FORMATS
    if img.mode == "P":
        img = img.convert("L")
    arr = np.asarray(img)
    if arr.ndim == 3:
        channels = arr.shape[2]
        arr = arr[..., : 3 if channels >= 3 else 1].max(axis=2)  # ignore alpha
    return arr, lossy


def binarise_mask(arr: np.ndarray, lossy: bool) -> np.ndarray:
    if lossy and arr.dtype == np.uint8:
        return (arr >= LOSSY_MASK_THRESHOLD).astype(np.uint8)
    return (arr > 0).astype(np.uint8)


def load_mask(path: Path | str) -> np.ndarray:
    """Decode a ground-truth mask to a uint8 (H, W) array in {0, 1}: any value > 0 is anomalous, or for a lossy
    (JPEG) mask any value >= ``LOSSY_MASK_THRESHOLD`` (``vitmemad.data.checks`` warns about such masks)."""
    return binarise_mask(*mask_values(path))


def verify_image_file(path: Path | str) -> None:
    """Cheap integrity check (no full decode for PNG): raise DatasetError naming an unreadable file.

    PNG files are checked chunk by chunk (CRCs, truncation) with PIL's ``verify``; other formats,
    whose ``verify`` checks little, are decoded. Lets a half-copied dataset fail at setup.
    """
    path = Path(path)
    with _reading(path), Image.open(path) as img:
        if img.format == "PNG":
            img.verify()
        else:
            img.load()


def image_size(path: Path | str) -> tuple[int, int]:
    """Upright (width, height) from the file header only (cheap; used for early mask checks): an EXIF orientation
    that turns the image by 90 degrees swaps them."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            return (h, w) if img.getexif().get(0x0112) in _TRANSPOSED else (w, h)
    except Exception as exc:
        raise DatasetError(f"Cannot read image {path}: {type(exc).__name__}: {exc}") from exc
