"""DICOM reader: a series folder or a single file -> :class:`CTVolume` in HU.

Slices are sorted by their position along the slice normal (ImagePositionPatient . (row x column cosines)),
not by file name or InstanceNumber, and RescaleSlope/RescaleIntercept are applied to get HU. A folder with several
series yields the largest one and says so in ``meta["notes"]``.

Compressed pixel data is decoded by pydicom's plugins: JPEG Baseline/Extended/Lossless and JPEG-LS by
pylibjpeg-libjpeg, JPEG 2000 by pylibjpeg-openjpeg (or Pillow), RLE and Deflate by pydicom itself. The transfer
syntaxes of a series are checked once, from the headers, before any slice is decoded: one that cannot be decoded
gives one :class:`InputError` line naming the syntax and what to install.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from napari_covidseg.errors import InputError
from napari_covidseg.io.checks import as_greyscale_volume, check_memory
from napari_covidseg.io.orientation import display_spacing, to_display
from napari_covidseg.io.volume import CTVolume

# Tags kept in meta: useful for provenance and model cards, nothing that identifies the patient.
KEPT_TAGS = (
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "KVP",
    "ConvolutionKernel",
    "SliceThickness",
    "SeriesDescription",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "BodyPartExamined",
)
# Modalities we refuse: a CT model run on them gives meaningless output.
NON_CT_MODALITIES = {"MR", "PT", "NM", "US", "CR", "DX", "MG", "XA", "RF", "OT", "SEG", "RTSTRUCT", "SR", "PR"}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# The packages (dependencies of this plugin) that decode each compressed transfer syntax; named in the error when
# a decoder is missing. RLE, Deflate and the uncompressed syntaxes need nothing beyond pydicom.
_LIBJPEG = ("pylibjpeg", "pylibjpeg-libjpeg")
_OPENJPEG = ("pylibjpeg", "pylibjpeg-openjpeg")
DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": _LIBJPEG,  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": _LIBJPEG,  # JPEG Extended (Process 2 and 4)
    "1.2.840.10008.1.2.4.57": _LIBJPEG,  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70": _LIBJPEG,  # JPEG Lossless, first-order prediction (Process 14, SV1)
    "1.2.840.10008.1.2.4.80": _LIBJPEG,  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": _LIBJPEG,  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": _OPENJPEG,  # JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.91": _OPENJPEG,  # JPEG 2000
    "1.2.840.10008.1.2.4.201": _OPENJPEG,  # High-Throughput JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.202": _OPENJPEG,  # High-Throughput JPEG 2000 with RPCL Options (Lossless Only)
    "1.2.840.10008.1.2.4.203": _OPENJPEG,  # High-Throughput JPEG 2000
}
_CONVERT_HINT = (
    "convert the series to an uncompressed transfer syntax first, e.g. with GDCM (gdcmconv --raw IN OUT) "
    "or DCMTK (dcmdjpeg / dcmconv)"
)


def read_dicom(path: Path) -> CTVolume:
    """Read a DICOM series from a folder (largest series wins) or one DICOM file (one slice)."""
    with warnings.catch_warnings():
        # pydicom warns about non-conforming values (UIDs with letters, odd VRs) that real archives are full of and
        # that do not matter here; left on, each would be one more line on the CLI's stderr.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
        return _read_dicom(path)


def _read_dicom(path: Path) -> CTVolume:
    headers = _read_headers([path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()))
    if not headers:
        raise InputError(f"{path}: no readable DICOM image files found")
    series = defaultdict(list)
    for f, ds in headers:
        series[str(getattr(ds, "SeriesInstanceUID", "unknown"))].append((f, ds))
    notes = []
    uid, members = max(series.items(), key=lambda kv: len(kv[1]))
    if len(series) > 1:
        sizes = ", ".join(str(len(m)) for m in sorted(series.values(), key=len, reverse=True))
        notes.append(f"{len(series)} series found (slices: {sizes}); using the largest ({len(members)} slices)")
    modality = str(getattr(members[0][1], "Modality", "")).upper()
    if modality in NON_CT_MODALITIES:
        raise InputError(f"{path}: modality is {modality}, not CT; this tool segments CT only")
    try:
        members = _same_geometry(members, notes)
        rows, cols = int(members[0][1].Rows), int(members[0][1].Columns)
        check_memory((len(members), rows, cols), str(path), what="series (slices x rows x columns)")
        members, affine = _sort_and_affine(members, path)
    except (TypeError, ValueError, IndexError, KeyError, AttributeError) as exc:
        if isinstance(exc, InputError):
            raise
        detail = " ".join(str(exc).split())
        raise InputError(
            f"{path}: malformed DICOM geometry tags (size, orientation, position or spacing: {detail})"
        ) from exc
    check_transfer_syntaxes(members)
    slices = [_hu_slice(f) for f, _ in members]
    disk = np.ascontiguousarray(np.stack(slices, axis=-1).transpose(1, 0, 2))  # (columns, rows, slices)
    disk = as_greyscale_volume(disk, str(path))
    array, ornt = to_display(disk, affine)
    first = members[0][1]
    meta = {
        "ornt": ornt,
        "disk_shape": disk.shape,
        "format": "dicom",
        "series_uid": uid,
        "files": [str(f) for f, _ in members],
        "tags": {t: str(getattr(first, t)) for t in KEPT_TAGS if hasattr(first, t)},
        "notes": notes,
    }
    return CTVolume(array, display_spacing(affine, ornt), affine, "HU", str(path), meta)


def _read_headers(files: list[Path]) -> list:
    import pydicom
    from pydicom.errors import InvalidDicomError

    out = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError, KeyError):
            continue
        if "Rows" in ds and "Columns" in ds:
            out.append((f, ds))
    return out


def check_transfer_syntaxes(members: list) -> None:
    """Raise :class:`InputError` for the first transfer syntax among the headers that pydicom cannot decode.

    ``members`` are ``(file, header)`` pairs; each distinct syntax is checked once (one look-up per series, not per
    slice), so a long series in an undecodable syntax fails at once, with one line, before any pixel is read.
    """
    first_file: dict[str, Path] = {}
    for f, ds in members:
        meta = getattr(ds, "file_meta", None)
        uid = str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""
        if uid and uid not in first_file:  # no TransferSyntaxUID: pydicom guessed the encoding, let it decode
            first_file[uid] = f
    for uid, f in first_file.items():
        problem = undecodable_reason(uid)
        if problem:
            raise InputError(f"{problem} — file {f}")


def undecodable_reason(transfer_syntax: str) -> str | None:
    """None when pydicom can decode pixel data in ``transfer_syntax`` here, else the reason and the fix (one line,
    starting with the cause: "cannot decode JPEG 2000 (1.2.840.10008.1.2.4.91) pixel data: install ...")."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(transfer_syntax.strip().rstrip("\0"))
    if uid.name != str(uid):
        label = f"{uid.name} ({uid})"
    elif uid.is_private:
        label = f"private transfer syntax {uid}"
    else:
        label = f"transfer syntax {uid} (unknown to pydicom {_pydicom_version()})"
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:  # private or unknown syntaxes, JPEG XL, video, retired JPEG processes
        return f"cannot decode {label} pixel data: no DICOM decoder for Python handles it; {_CONVERT_HINT}"
    if decoder.is_available:
        return None
    packages = DECODER_PACKAGES.get(str(uid))
    if packages:
        fix = f"install {' and '.join(packages)} (pip install {' '.join(packages)})"
    else:
        needs = "; ".join(" ".join(str(d).split()) for d in decoder.missing_dependencies) or "a pydicom decoder plugin"
        fix = f"install one of: {needs}"
    return f"cannot decode {label} pixel data: {fix}"


def _pydicom_version() -> str:
    import pydicom

    return pydicom.__version__


def _same_geometry(members: list, notes: list[str]) -> list:
    """Keep the slices sharing the most common size and orientation (a series should have just one)."""
    groups = defaultdict(list)
    for f, ds in members:
        iop = tuple(round(v, 4) for v in _numbers(ds, f, "ImageOrientationPatient", 6, (1, 0, 0, 0, 1, 0)))
        groups[(int(ds.Rows), int(ds.Columns), iop)].append((f, ds))
    best = max(groups.values(), key=len)
    if len(groups) > 1:
        notes.append(f"dropped {len(members) - len(best)} slices whose size or orientation differs")
    return best


def _sort_and_affine(members: list, path: Path) -> tuple[list, np.ndarray]:
    f0, ds0 = members[0]
    iop = np.array(_numbers(ds0, f0, "ImageOrientationPatient", 6, (1, 0, 0, 0, 1, 0)))
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    if np.linalg.norm(normal) < 0.5:
        raise InputError(f"{f0}: ImageOrientationPatient {tuple(iop)} does not give two perpendicular directions")
    dy, dx = _numbers(ds0, f0, "PixelSpacing", 2, (1.0, 1.0))
    if dy <= 0 or dx <= 0:
        raise InputError(f"{f0}: PixelSpacing must be positive, got {dy} x {dx} mm")
    if all(hasattr(ds, "ImagePositionPatient") for _, ds in members):
        positions = {id(ds): np.array(_numbers(ds, f, "ImagePositionPatient", 3, ())) for f, ds in members}
        members = sorted(members, key=lambda m: float(positions[id(m[1])] @ normal))
        origin = positions[id(members[0][1])]
        if len(members) > 1:
            step = (positions[id(members[-1][1])] - origin) / (len(members) - 1)
            if np.linalg.norm(step) < 1e-6:
                raise InputError(
                    f"{path}: several slices share one position: this folder mixes series or repeats slices"
                )
        else:
            step = normal * float(getattr(ds0, "SliceThickness", 1.0) or 1.0)
    else:  # no geometry: fall back to InstanceNumber order and nominal spacing
        members = sorted(members, key=lambda m: int(getattr(m[1], "InstanceNumber", 0) or 0))
        origin = np.zeros(3)
        step = normal * float(getattr(ds0, "SliceThickness", 1.0) or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = row_cos * dx  # +column index moves along the row direction
    lps[:3, 1] = col_cos * dy  # +row index moves along the column direction
    lps[:3, 2] = step
    lps[:3, 3] = origin
    return members, LPS_TO_RAS @ lps


def _numbers(ds, path: Path, keyword: str, n: int, default: tuple) -> list[float]:
    """``n`` finite numbers from a multi-valued DICOM tag (``default`` when absent), else :class:`InputError`."""
    value = getattr(ds, keyword, None)
    if value is None or value == "":
        return [float(v) for v in default]
    values = [value] if isinstance(value, str | bytes) or not hasattr(value, "__iter__") else list(value)
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != n or not all(np.isfinite(numbers)):
        raise InputError(f"{path}: {keyword} should hold {n} numbers, got {' '.join(str(value).split())}")
    return numbers


def _hu_slice(path: Path) -> np.ndarray:
    import pydicom

    # Messages start with the cause and end with the file: napari's notification shows only the beginning.
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # the header was readable, the rest of the file is not: truncated or corrupt
        raise InputError(f"cannot read the DICOM file ({_one_line(exc)}) — file {path}") from exc
    if "PixelData" not in ds:
        raise InputError(f"DICOM file has no pixel data — file {path}")
    try:
        pixels = ds.pixel_array.astype(np.float32)
    except Exception as exc:  # corrupt or truncated pixel data (missing decoders are caught before, per series)
        what = _syntax_name(ds)
        raise InputError(f"cannot decode the {what}pixel data ({_one_line(exc)}) — file {path}") from exc
    if pixels.ndim != 2:
        raise InputError(
            f"expected one greyscale slice per file, got pixel array {pixels.shape} "
            f"(a colour image or a multi-frame file?) — file {path}"
        )
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    return pixels * slope + intercept


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _syntax_name(ds) -> str:
    """ "JPEG 2000 (1.2.840.10008.1.2.4.91) " for compressed pixel data, "" for uncompressed or unknown."""
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if uid is None or not getattr(uid, "is_compressed", False):
        return ""
    return f"{uid.name} ({uid}) "
