"""PNG/JPG slices: one file or a folder of them, greyscale display values (``intensity="display"``).

8-bit images are used as they are. 16-bit greyscale images (PNG ``I;16``) are brought to the 0-255 display range
by their real range, with a note: values up to 255 are already 8-bit values in a 16-bit file; exact multiples of
257 are an 8-bit image scaled to 16 bits; anything else is scaled by the bit depth it uses (12-bit data: 0-4095).
"""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from napari_covidseg.errors import InputError
from napari_covidseg.io.checks import check_memory, check_pixel_type, reason
from napari_covidseg.io.volume import RawScan, display_order_scan

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_image(path: Path) -> RawScan:
    """Read one PNG/JPG slice as greyscale display values."""
    pixels, note = _image_array(path)
    meta = {"format": "image", "notes": [note] if note else []}
    return display_order_scan(pixels[np.newaxis], (1.0, 1.0, 1.0), str(path), "display", meta)


def read_image_folder(folder: Path, files: list[Path]) -> RawScan:
    """Stack same-sized PNG/JPG slices of a folder in natural name order (slice 0 is the first name)."""
    files = sorted(files, key=_natural_key)
    width, height = _image_size(files[0])
    check_memory((len(files), height, width), str(folder), what=f"stack of {len(files)} images")
    read = [_image_array(f) for f in files]
    slices = [pixels for pixels, _ in read]
    shapes = {s.shape for s in slices}
    if len(shapes) != 1:
        raise InputError(f"{folder}: the images differ in size {sorted(shapes)}; open them one at a time")
    notes = sorted({note for _, note in read if note})
    meta = {"format": "image", "files": [f.name for f in files], "notes": notes}
    return display_order_scan(np.stack(slices), (1.0, 1.0, 1.0), str(folder), "display", meta)


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from an image header, without decoding the pixels."""
    with _open_image(path) as im:
        return im.size


@contextmanager
def _open_image(path: Path):
    """``PIL.Image.open`` with its errors as :class:`InputError` (a lying header, a decompression bomb included)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # the memory guard below judges size; PIL's bomb warning would only add a line to stderr
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        many = f"{int(pixels.group(1)):,} pixels" if pixels else "more pixels than any CT slice"
        raise InputError(f"{path}: the image header claims {many}, far too large for a CT slice") from exc
    except UnidentifiedImageError as exc:
        raise InputError(f"{path}: not a readable image (the content is not PNG or JPEG data)") from exc
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable image ({reason(exc, path)})") from exc
    with im:
        yield im


def _image_array(path: Path) -> tuple[np.ndarray, str | None]:
    """(2-D float32 display values 0-255, a note when a 16-bit image was rescaled)."""
    with _open_image(path) as im:
        width, height = im.size
        check_memory((height, width), str(path), what="image")
        try:
            im.load()
            wide = im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
            grey = im if wide or im.mode == "L" else im.convert("L")
            data = np.asarray(grey)
        except (OSError, ValueError, SyntaxError) as exc:
            raise InputError(f"{path}: not a readable image ({reason(exc, path)})") from exc
    check_pixel_type(data.dtype, str(path))
    if data.ndim != 2:
        raise InputError(f"{path}: expected a greyscale image, got pixel array of shape {data.shape}")
    if not wide:
        return data.astype(np.float32), None
    return _to_display_range(data.astype(np.float64), path)


def _to_display_range(data: np.ndarray, path: Path) -> tuple[np.ndarray, str | None]:
    if not np.isfinite(data).all():
        raise InputError(f"{path}: the image holds NaN or infinite values")
    lo, hi = float(data.min()), float(data.max())
    if lo < 0:
        raise InputError(
            f"{path}: a greyscale image with negative values ({lo:g}..{hi:g}); save CT in Hounsfield units as NIfTI "
            "or DICOM, or slices as 8-bit display images"
        )
    if hi <= 255:
        return data.astype(np.float32), None
    if np.all(np.mod(data, 257) == 0):
        return (data / 257.0).astype(np.float32), "16-bit image holding 8-bit values (x 257): divided by 257"
    bits = max(9, int(np.ceil(np.log2(hi + 1))))
    scale = (2**bits - 1) / 255.0
    note = (
        f"16-bit greyscale image using {bits} bits (0..{hi:g}): scaled to 8-bit display values (/{scale:.4g}); "
        "it is read as a windowed display image, not Hounsfield units"
    )
    return (data / scale).astype(np.float32), note


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]
