"""DICOM reader: a series folder or a single file -> :class:`RawScan` in HU.

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
from napari_covidseg.io.checks import check_memory
from napari_covidseg.io.orientation import display_ornt
from napari_covidseg.io.volume import RawScan

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
POSITION_TOLERANCE_MM = 0.01  # two slices closer than this along the normal are at one position
SPACING_TOLERANCE = 0.05  # a step may deviate this fraction of the series' step and still be on the grid
MAX_MISSING_SLICES = 2  # missing slices are filled up to this many, or MAX_MISSING_FRACTION of the series
MAX_MISSING_FRACTION = 0.1
AIR_HU = -1024

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


def read_dicom(path: Path) -> RawScan:
    """Read a DICOM series from a folder (largest series wins) or one DICOM file (one slice)."""
    with warnings.catch_warnings():
        # pydicom warns about non-conforming values (UIDs with letters, odd VRs) that real archives are full of and
        # that do not matter here; left on, each would be one more line on the CLI's stderr.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
        return _read_dicom(path)


def _read_dicom(path: Path) -> RawScan:
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
        members, affine = _sort_and_affine(members, path, notes)
        check_memory((len(members), rows, cols), str(path), what="series (slices x rows x columns)")
    except (TypeError, ValueError, IndexError, KeyError, AttributeError) as exc:
        if isinstance(exc, InputError):
            raise
        detail = " ".join(str(exc).split())
        raise InputError(
            f"{path}: malformed DICOM geometry tags (size, orientation, position or spacing: {detail})"
        ) from exc
    present = [m for m in members if m is not None]
    check_transfer_syntaxes(present)
    slices = [_hu_slice(m[0]) if m is not None else None for m in members]
    filler = np.full((rows, cols), AIR_HU, dtype=np.float32)
    slices = [filler if a is None else a for a in slices]
    disk = np.ascontiguousarray(np.stack(slices, axis=-1).transpose(1, 0, 2))  # (columns, rows, slices)
    first = present[0][1]
    meta = {
        "format": "dicom",
        "series_uid": uid,
        "files": [str(m[0]) if m is not None else "" for m in members],
        "tags": {t: str(getattr(first, t)) for t in KEPT_TAGS if hasattr(first, t)},
        "notes": notes,
    }
    inserted = [k for k, m in enumerate(members) if m is None]
    if inserted:  # disk slice k -> index along the display axis it goes to (flipped or not)
        ornt = display_ornt(affine)
        axis, flip = int(ornt[2][0]), float(ornt[2][1]) < 0
        meta["inserted_slices"] = sorted((len(members) - 1 - k) if flip else k for k in inserted)
        meta["inserted_axis"] = axis
    return RawScan(disk, affine, str(path), meta, "HU")


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
    """Keep the slices sharing the most common size, orientation and pixel spacing (a series should have one grid;
    scouts and odd reconstructions filed in the same series are left out, and the note names them)."""
    groups = defaultdict(list)
    for f, ds in members:
        iop = tuple(round(v, 4) for v in _numbers(ds, f, "ImageOrientationPatient", 6, (1, 0, 0, 0, 1, 0)))
        spacing = tuple(round(v, 4) for v in _numbers(ds, f, "PixelSpacing", 2, (1.0, 1.0)))
        groups[(int(ds.Rows), int(ds.Columns), iop, spacing)].append((f, ds))
    best = max(groups.values(), key=len)
    if len(groups) > 1:
        key = next(k for k, v in groups.items() if v is best)
        for k, v in groups.items():
            if v is not best and k[:3] == key[:3]:  # same grid but another pixel size: another reconstruction
                raise InputError(
                    f"{members[0][0].parent}: slices of one series differ in PixelSpacing ({key[3][0]:g}x{key[3][1]:g}"
                    f" mm in {len(best)} slices, {k[3][0]:g}x{k[3][1]:g} mm in {len(v)}, e.g. {v[0][0].name}); one "
                    "volume cannot hold both — keep one reconstruction per folder"
                )
        odd = []
        for k, v in groups.items():
            if v is best:
                continue
            what = [
                name
                for name, mine, theirs in (
                    ("size", key[:2], k[:2]),
                    ("orientation", key[2], k[2]),
                    ("pixel spacing", key[3], k[3]),
                )
                if mine != theirs
            ]
            odd.append(f"{len(v)} with another {' and '.join(what)} (e.g. {v[0][0].name})")
        notes.append(
            f"left out {len(members) - len(best)} of {len(members)} slices whose grid differs from the series' "
            f"{key[0]}x{key[1]} at {key[3][0]:g}x{key[3][1]:g} mm: " + "; ".join(odd)
        )
    return best


def _sort_and_affine(members: list, path: Path, notes: list[str]) -> tuple[list, np.ndarray]:
    """Members sorted along the slice normal (``None`` where a missing slice is inserted) and the affine.

    Like GDCM/ITK and dcm2niix: positions are projected on the normal of the orientation; repeated files of one
    slice (same position, same pixel data) are kept once; two different images at one position, or spacing that is
    not a whole multiple of the series' step, are refused; up to ``MAX_MISSING_FRACTION`` of missing slices are
    inserted as empty (air) slices at their positions, with a note. Every header position then lies on the grid.
    """
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
        members = _drop_repeats(members, positions, normal, path, notes)
        origin = positions[id(members[0][1])]
        if len(members) > 1:
            members, step = _regular_grid(members, positions, normal, path, notes)
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


def _drop_repeats(members: list, positions: dict, normal: np.ndarray, path: Path, notes: list[str]) -> list:
    """Keep one file of each position; refuse two different images at one position (naming both files)."""
    kept = [members[0]]
    repeats = 0
    for f, ds in members[1:]:
        pf, pds = kept[-1]
        if abs(float((positions[id(ds)] - positions[id(pds)]) @ normal)) > POSITION_TOLERANCE_MM:
            kept.append((f, ds))
            continue
        if _pixel_bytes(f) != _pixel_bytes(pf):
            z = float(positions[id(ds)] @ normal)
            raise InputError(
                f"{path}: two different images at one slice position ({z:.2f} mm along the slice normal: {pf.name} "
                f"and {f.name}); the folder mixes reconstructions or acquisitions — keep one series per folder"
            )
        repeats += 1
    if repeats:
        notes.append(f"{repeats} repeated file(s) of the same slice (same position and pixels) read once")
    return kept


def _pixel_bytes(f: Path) -> bytes:
    import pydicom

    try:
        return bytes(pydicom.dcmread(f).get("PixelData", b"") or b"")
    except Exception as exc:
        raise InputError(f"cannot read the DICOM file ({_one_line(exc)}) — file {f}") from exc


def _regular_grid(members: list, positions: dict, normal: np.ndarray, path: Path, notes: list[str]):
    """(members with ``None`` at missing positions, step vector): refuse spacing that is not one regular grid."""
    z = np.array([float(positions[id(ds)] @ normal) for _, ds in members])
    gaps = np.diff(z)
    base = float(gaps.min())  # missing slices make some gaps whole multiples of the step, never smaller
    tol = max(POSITION_TOLERANCE_MM, SPACING_TOLERANCE * base)
    multiples = np.rint(gaps / base).astype(int)
    if (multiples < 1).any() or (np.abs(gaps - multiples * base) > tol).any():
        bad = int(np.flatnonzero((multiples < 1) | (np.abs(gaps - multiples * base) > tol))[0])
        raise InputError(
            f"{path}: slice spacing is not regular: the series steps {base:.3g} mm, but {members[bad][0].name} "
            f"({z[bad]:.2f} mm) to {members[bad + 1][0].name} ({z[bad + 1]:.2f} mm) is {gaps[bad]:.3g} mm; "
            "a volume on one grid would misplace slices — resample it (e.g. with dcm2niix or 3D Slicer) first"
        )
    missing = int((multiples - 1).sum())
    if missing:
        total = len(members) + missing
        where = [f"{z[i] + base * k:.2f}" for i in np.flatnonzero(multiples > 1) for k in range(1, multiples[i])]
        shown = ", ".join(where[:6]) + (", ..." if len(where) > 6 else "")
        if missing > max(MAX_MISSING_SLICES, MAX_MISSING_FRACTION * total):
            raise InputError(
                f"{path}: {missing} of {total} slices are missing (positions {shown} mm along the slice normal); too "
                "many to fill — check that the whole series was exported"
            )
        filled: list = []
        for k, m in enumerate(members):
            filled.append(m)
            if k < len(gaps):
                filled.extend([None] * int(multiples[k] - 1))
        members = filled
        notes.append(
            f"{missing} slice(s) missing from the series at {shown} mm along the slice normal: inserted as empty "
            f"({AIR_HU} HU) slices so that every other slice keeps its position; no lesion is reported there"
        )
    first, last = positions[id(members[0][1])], positions[id(members[-1][1])]
    return members, (last - first) / (len(members) - 1)


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
    slope = _rescale(ds, path, "RescaleSlope", 1.0)
    intercept = _rescale(ds, path, "RescaleIntercept", 0.0)
    if slope == 0:
        raise InputError(f"RescaleSlope is 0, which would make every pixel the same value — file {path}")
    return pixels * slope + intercept


def _rescale(ds, path: Path, keyword: str, default: float) -> float:
    """A finite number from RescaleSlope/RescaleIntercept (absent or empty: the DICOM default), else InputError."""
    try:
        element = ds.get(keyword)
        raw = getattr(element, "value", element)
    except (TypeError, ValueError):  # pydicom converts DS on access and may fail on text like "abc"
        element = ds.get_item(keyword) if hasattr(ds, "get_item") else None
        raw = getattr(element, "value", b"")
        raw = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    if raw is None or raw == "" or raw == b"":
        return default
    try:
        number = float(raw)
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number):
        raise InputError(f"{keyword} is {' '.join(str(raw).split())!r}, not a finite number — file {path}")
    return number


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _syntax_name(ds) -> str:
    """ "JPEG 2000 (1.2.840.10008.1.2.4.91) " for compressed pixel data, "" for uncompressed or unknown."""
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if uid is None or not getattr(uid, "is_compressed", False):
        return ""
    return f"{uid.name} ({uid}) "
