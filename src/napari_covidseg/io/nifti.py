"""NIfTI, PNG/JPG and .npy readers. Each returns a :class:`CTVolume` in display orientation."""

from __future__ import annotations

import gzip
import logging
import re
import threading
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np

from napari_covidseg.errors import InputError
from napari_covidseg.io.checks import (
    as_greyscale_volume,
    check_memory,
    check_pixel_type,
    dims,
    format_bytes,
    guess_intensity,
    volume_bytes,
)
from napari_covidseg.io.orientation import display_spacing, to_display
from napari_covidseg.io.volume import CTVolume

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# NIfTI intent codes of vector and colour data (nifti1.h)
NIFTI_INTENT_VECTOR, NIFTI_INTENT_RGB, NIFTI_INTENT_RGBA = 1007, 2003, 2004
# deflate cannot compress better than about 1032:1, so a .gz file of n bytes never holds more than this many times n
MAX_DEFLATE_RATIO = 1100


def read_nifti(path: Path) -> CTVolume:
    """Read a .nii/.nii.gz file; intensities are scaled by the header's slope/intercept.

    Everything the header alone can tell is checked before any voxel is read: the shape and pixel type, the
    voxel-to-world matrix, whether the file can hold the voxels its header promises, and whether their float32 copy
    fits in memory. nibabel's own header repairs are not printed; they are kept in ``meta["notes"]``.
    """
    with _nibabel_log() as repairs:  # nibabel checks (and repairs) the header while loading it
        try:
            img = nib.load(str(path))
        except Exception as exc:  # nibabel raises many types for truncated/corrupt/foreign files
            raise InputError(f"{path}: not a readable NIfTI file ({_reason(exc, path)})") from exc
    shape = tuple(int(s) for s in img.shape)
    _check_nifti_header(path, img, shape)
    affine = _checked_affine(path, img, len(shape))
    _check_nifti_size(path, img, shape)
    check_memory(shape[:3], str(path))
    try:
        raw = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise InputError(f"{path}: cannot read the voxel data ({_reason(exc, path)})") from exc
    try:
        disk = as_greyscale_volume(raw, str(path))
    except InputError as exc:  # NaN/inf from a damaged .gz (nibabel never reads the CRC): say so instead
        damage = _gzip_damage(path)
        if damage:
            raise InputError(f"{path}: the compressed data is corrupt ({damage})") from exc
        raise
    array, ornt = to_display(disk, affine)
    header = img.header
    meta = {
        "ornt": ornt,
        "disk_shape": disk.shape,
        "format": "nifti",
        "sform_code": int(header["sform_code"]) if "sform_code" in header else 1,
        "qform_code": int(header["qform_code"]) if "qform_code" in header else 1,
    }
    if repairs:
        meta["notes"] = [f"NIfTI header repaired on reading: {'; '.join(repairs)}"]
    return CTVolume(array, display_spacing(affine, ornt), affine, guess_intensity(array), str(path), meta)


_NIBABEL_LOG_LOCK = threading.Lock()  # the logger is global: one reader at a time swaps its handlers


@contextmanager
def _nibabel_log():
    """Collect what nibabel logs about header repairs instead of letting it print to stderr."""
    from nibabel.imageglobals import logger

    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    with _NIBABEL_LOG_LOCK:
        saved, propagate = list(logger.handlers), logger.propagate
        collector = _Collect()
        for handler in saved:
            logger.removeHandler(handler)
        logger.addHandler(collector)
        logger.propagate = False
        try:
            yield messages
        finally:
            logger.removeHandler(collector)
            for handler in saved:
                logger.addHandler(handler)
            logger.propagate = propagate


def _check_nifti_header(path: Path, img, shape: tuple[int, ...]) -> None:
    """Shape and pixel type from the header: one greyscale 2-D/3-D volume with at least one voxel."""
    if any(s < 0 for s in shape):
        raise InputError(f"{path}: the header gives a negative dimension {shape}: the file is corrupt")
    check_pixel_type(img.get_data_dtype(), str(path))
    extra = shape[3:]
    while extra and extra[-1] == 1:
        extra = extra[:-1]
    if extra:
        intent = int(img.header["intent_code"]) if "intent_code" in img.header else 0
        colour = intent in (NIFTI_INTENT_VECTOR, NIFTI_INTENT_RGB, NIFTI_INTENT_RGBA) or extra[-1] in (3, 4)
        kind = " (a colour or vector image?)" if colour else ""
        if len(extra) == 1:
            raise InputError(f"{path}: 4-D NIfTI with {extra[0]} volumes{kind}; give one 3-D greyscale volume")
        raise InputError(f"{path}: {len(shape)}-D NIfTI of shape {shape}{kind}; give one 3-D greyscale volume")
    if 0 in shape:
        raise InputError(f"{path}: the header describes an empty image of shape {shape} (no voxels)")


def _checked_affine(path: Path, img, ndim: int) -> np.ndarray:
    """The voxel-to-world matrix, refusing a voxel size of 0/NaN and all-zero or flat (degenerate) matrices.

    With no sform the matrix is built from pixdim; nibabel silently turns a 0 or NaN pixdim into 1 mm, which would
    make every volume in ml wrong, so the raw header is checked and such a file is refused instead.
    """
    header = img.header
    sform_code = int(header["sform_code"]) if "sform_code" in header else 0
    if sform_code == 0:
        from nibabel.openers import ImageOpener

        try:
            with ImageOpener(str(path)) as fh:
                raw = type(header).from_fileobj(fh, check=False)
            pixdim = np.asarray(raw["pixdim"], dtype=np.float64)[1 : 1 + min(ndim, 3)]
        except Exception:  # unreadable raw header: nibabel's checked one is all there is
            pixdim = np.ones(1)
        if not np.isfinite(pixdim).all() or (pixdim == 0).any():
            raise InputError(
                f"{path}: the header's voxel size (pixdim) is {tuple(float(p) for p in pixdim)} mm and there is no "
                "sform matrix, so the voxel spacing is unknown; fix the header (set pixdim to the voxel size in mm)"
            )
    affine = np.asarray(img.affine, dtype=np.float64)
    source = "sform" if sform_code else "qform" if int(header.get("qform_code", 0)) else "pixdim"
    if not np.isfinite(affine).all():
        raise InputError(f"{path}: the header's voxel-to-world matrix ({source}) holds NaN or infinite values")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        what = "all zeros" if not affine[:3, :3].any() else "flat (two voxel axes point the same way)"
        raise InputError(f"{path}: the header's voxel-to-world matrix ({source}) is degenerate: {what}; fix the header")
    return affine


def _check_nifti_size(path: Path, img, shape: tuple[int, ...]) -> None:
    """Refuse a file too short to hold the voxels its header promises, before reading (or allocating) them."""
    need = volume_bytes(shape, img.get_data_dtype().itemsize)
    offset = int(getattr(img.dataobj, "offset", 352))  # the loaded header's vox_offset is reset to 0
    size = path.stat().st_size
    described = f"the header describes {dims(shape)} voxels ({format_bytes(need)})"
    if path.name.lower().endswith(".gz"):
        if size * MAX_DEFLATE_RATIO < offset + need:
            raise InputError(
                f"{path}: {described} but {format_bytes(size)} of gzip data cannot hold that much: the file is "
                "truncated or its header is corrupt"
            )
    elif size < offset + need:
        raise InputError(
            f"{path}: {described} but the file holds only {format_bytes(max(size - offset, 0))} of voxel data: "
            "it is truncated (or its header is corrupt)"
        )


def _gzip_damage(path: Path) -> str | None:
    """Why a .gz file's deflate stream is damaged (bad data, truncated, CRC or length mismatch), or None if intact.

    Streams the whole file once; used only after reading went wrong, to tell corruption from odd voxel values.
    """
    if not path.name.lower().endswith(".gz"):
        return None
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except EOFError:
        return "the compressed data ends early"
    except (OSError, zlib.error) as exc:
        return " ".join(str(exc).split())
    return None


def _reason(exc: BaseException, path: Path) -> str:
    """A library exception as a short reason, without its class name or a repeat of the path."""
    text = str(exc).replace(f'"{path}"', "the file").replace(str(path), "the file").strip()
    if isinstance(exc, EOFError) or "ended before the end-of-stream" in text:
        return "the file is truncated: the compressed data ends early"
    if isinstance(exc, zlib.error) or "CRC check failed" in text or "invalid" in text and "decompress" in text:
        return f"the compressed data is corrupt: {text}"
    if "not a gzip file" in text:
        return "the name ends in .gz but the content is not gzip-compressed"
    if "Cannot work out file type" in text:
        return "no NIfTI header found: another kind of file, or a damaged or truncated one"
    expected = re.search(r"Expected (\d+) bytes, got (\d+) bytes", text)
    if expected:
        want, got = (int(v) for v in expected.groups())
        return f"the file is truncated: {format_bytes(want)} of voxel data expected, {format_bytes(got)} found"
    text = " ".join(text.split())  # one line
    return text or "unknown problem"


def display_volume(
    array_zyx: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    source: str,
    intensity: str,
    meta: dict | None = None,
) -> CTVolume:
    """Wrap an array already in display order (images, .npy) with a matching on-disk geometry.

    On disk the voxel order is (x, y, z) with an LPS-like affine ``diag(-sx, -sy, sz)``, so that saving writes a
    NIfTI any viewer shows in the same orientation.
    """
    sz, sy, sx = spacing_zyx
    affine = np.diag([-sx, -sy, sz, 1.0])
    disk = np.ascontiguousarray(array_zyx.transpose(2, 1, 0))
    array, ornt = to_display(disk, affine)
    meta = {"ornt": ornt, "disk_shape": disk.shape, **(meta or {})}
    return CTVolume(array, spacing_zyx, affine, intensity, source, meta)  # type: ignore[arg-type]


def read_image(path: Path) -> CTVolume:
    """Read one PNG/JPG slice as greyscale (intensity ``"display"``)."""
    return display_volume(_image_array(path)[np.newaxis], (1.0, 1.0, 1.0), str(path), "display", {"format": "image"})


def read_image_folder(folder: Path, files: list[Path]) -> CTVolume:
    """Stack same-sized PNG/JPG slices of a folder in natural name order (slice 0 is the first name)."""
    files = sorted(files, key=_natural_key)
    width, height = _image_size(files[0])
    check_memory((len(files), height, width), str(folder), what=f"stack of {len(files)} images")
    slices = [_image_array(f) for f in files]
    shapes = {s.shape for s in slices}
    if len(shapes) != 1:
        raise InputError(f"{folder}: the images differ in size {sorted(shapes)}; open them one at a time")
    return display_volume(
        np.stack(slices), (1.0, 1.0, 1.0), str(folder), "display", {"format": "image", "files": [f.name for f in files]}
    )


def read_npy(path: Path) -> CTVolume:
    """Read a .npy array already in display order: (y, x) or (z, y, x); 1 mm spacing is assumed.

    The header is checked first: arrays of Python objects are refused without unpickling anything, and a shape
    the file cannot hold or the memory cannot take is refused before allocating it.
    """
    shape, dtype, offset = _npy_header(path)
    if dtype.hasobject:
        raise InputError(
            f"{path}: the array holds Python objects (stored as a pickle), which are never loaded for safety; "
            "save a numeric array instead"
        )
    check_pixel_type(dtype, str(path))
    need = volume_bytes(shape, dtype.itemsize)
    size = path.stat().st_size
    if size < offset + need:
        raise InputError(
            f"{path}: the header describes a {dims(shape)} {dtype} array ({format_bytes(need)}) but the file holds "
            f"only {format_bytes(max(size - offset, 0))} of data: it is truncated (or its header is corrupt)"
        )
    check_memory(shape, str(path), what="array")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"{path}: not a readable .npy array ({_reason(exc, path)})") from exc
    if data.ndim == 2:
        data = data[np.newaxis]
    array = as_greyscale_volume(data, str(path))
    return display_volume(array, (1.0, 1.0, 1.0), str(path), guess_intensity(array), {"format": "npy"})


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) from a .npy header, without reading the data."""
    from numpy.lib import format as npy_format

    try:
        with open(path, "rb") as fh:
            version = npy_format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = npy_format.read_array_header_1_0(fh)
            else:
                shape, _, dtype = npy_format.read_array_header_2_0(fh)
            return tuple(int(s) for s in shape), np.dtype(dtype), fh.tell()
    except (ValueError, TypeError, SyntaxError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({_reason(exc, path)})") from exc


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
        raise InputError(f"{path}: not a readable image ({_reason(exc, path)})") from exc
    with im:
        yield im


def _image_array(path: Path) -> np.ndarray:
    with _open_image(path) as im:
        width, height = im.size
        check_memory((height, width), str(path), what="image")
        try:
            im.load()
            grey = im.convert("L") if im.mode not in ("L", "I", "I;16", "F") else im
            data = np.asarray(grey)
        except (OSError, ValueError, SyntaxError) as exc:
            raise InputError(f"{path}: not a readable image ({_reason(exc, path)})") from exc
    out = as_greyscale_volume(data, str(path))
    return out[..., 0]


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]
