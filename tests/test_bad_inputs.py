"""A corpus of malformed inputs, generated here: each one must give one readable `covidseg: error:` line and exit 2.

Every case is also opened with the napari reader, which must raise :class:`InputError` (napari shows it as a
notification) and never crash, hang or allocate what a lying header asks for. A few look-alikes that are valid
(a constant scan, DICOM without rescale tags, two series in one folder, odd but valid file names) are checked to
load or segment normally.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from napari_covidseg._napari_io import get_reader, read_ct
from napari_covidseg.cli import main
from napari_covidseg.errors import InputError
from napari_covidseg.io import load_ct

# ------------------------------------------------------------------------------------------------ file writers


def write_nifti(path: Path, data: np.ndarray, affine=None, **header) -> Path:
    """A NIfTI-1 file (.nii or .nii.gz from the name); ``header`` fields are set after the affine."""
    img = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, str(path))
    return path


def nifti_bytes_claiming(shape, dtype=np.int16, payload: int = 64, version: int = 1) -> bytes:
    """A NIfTI header (version 1: int16 dims; 2: int64 dims) claiming ``shape``, then ``payload`` bytes of voxels."""
    hdr = nib.Nifti1Header() if version == 1 else nib.Nifti2Header()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(shape)
    hdr.set_qform(np.eye(4), code=1)
    hdr.set_sform(np.eye(4), code=1)
    hdr["vox_offset"] = len(hdr.binaryblock) + 4
    return hdr.binaryblock + b"\0" * 4 + b"\0" * payload


def write_dicom(
    path: Path,
    hu: np.ndarray,
    *,
    z: float = 0.0,
    series: str | None = None,
    modality: str = "CT",
    rescale: bool = True,
    pixel_data: bool = True,
    spacing=(0.7, 0.8),
) -> Path:
    """One DICOM slice: stored value = HU + 1024 with RescaleIntercept -1024 (or raw HU without rescale tags)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage if modality == "MR" else CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = modality, series or generate_uid(), "1.2.3"
    ds.ImagePositionPatient = [-20.0, -15.0, float(z)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = list(spacing)
    ds.SliceThickness = 2.5
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    if rescale:
        ds.PixelRepresentation = 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        stored = (hu.astype(np.int32) + 1024).astype(np.uint16)
    else:
        ds.PixelRepresentation = 1
        stored = hu.astype(np.int16)
    if pixel_data:
        ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(folder: Path, n=3, rows=24, cols=20, value=-500, modality="CT", series=None, z0=0.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    series = series or generate_uid()
    for i in range(n):
        hu = np.full((rows, cols), value, np.int16)
        write_dicom(folder / f"{series[-6:]}_{i:03d}.dcm", hu, z=z0 + 2.5 * i, series=series, modality=modality)
    return folder


def png_bytes(width: int, height: int, payload: bytes = b"\0\0") -> bytes:
    """A greyscale PNG whose header claims ``width`` x ``height`` but whose data is a couple of bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(payload)) + chunk(b"IEND", b"")


def save_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(array).save(path)
    return path


def _small(value=-500.0, shape=(12, 16, 10)) -> np.ndarray:
    return np.full(shape, value, np.float32)


class _Unpickled:
    """An object whose unpickling creates a marker file: proof that a .npy was (or was not) unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# ------------------------------------------------------------------------------------------------ the corpus
# Each builder gets an empty folder and returns (input path, words the error line must contain).


def _empty(name):
    def build(d: Path):
        (d / name).write_bytes(b"")
        return d / name, ["empty"]

    return build


def _nii_half(d: Path):
    full = write_nifti(d / "full.nii", np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32))
    data = full.read_bytes()
    (d / "half.nii").write_bytes(data[: len(data) // 2])
    full.unlink()
    return d / "half.nii", ["truncated"]


def _nii_header_only(d: Path):
    full = write_nifti(d / "full.nii", _small())
    (d / "header_only.nii").write_bytes(full.read_bytes()[:352])
    full.unlink()
    return d / "header_only.nii", ["truncated"]


def _nii_gz_half(d: Path):
    data = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    full = write_nifti(d / "full.nii.gz", data).read_bytes()
    (d / "half.nii.gz").write_bytes(full[: len(full) // 2])
    (d / "full.nii.gz").unlink()
    return d / "half.nii.gz", ["truncated"]


def _nii_gz_corrupt(d: Path):
    data = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    raw = bytearray(write_nifti(d / "full.nii.gz", data).read_bytes())
    (d / "full.nii.gz").unlink()
    mid = len(raw) // 2
    raw[mid : mid + 64] = bytes(64)  # zero a stretch of the deflate stream
    (d / "corrupt.nii.gz").write_bytes(bytes(raw))
    return d / "corrupt.nii.gz", ["corrupt"]


def _gzip_garbage(d: Path):
    (d / "garbage.nii.gz").write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(200))
    return d / "garbage.nii.gz", ["NIfTI"]


def _png_named_nii_gz(d: Path):
    save_png(d / "real.png", np.zeros((16, 16), np.uint8))
    (d / "photo.nii.gz").write_bytes((d / "real.png").read_bytes())
    (d / "real.png").unlink()
    return d / "photo.nii.gz", ["not a", "NIfTI"]


def _text_named_dcm(d: Path):
    (d / "notes.dcm").write_text("this is not a DICOM file\n" * 20)
    return d / "notes.dcm", ["DICOM"]


def _random_nii(d: Path):
    (d / "random.nii").write_bytes(np.random.default_rng(1).bytes(4096))
    return d / "random.nii", ["NIfTI"]


def _random_nii_gz(d: Path):
    (d / "random.nii.gz").write_bytes(np.random.default_rng(2).bytes(4096))
    return d / "random.nii.gz", ["NIfTI"]


def _random_unknown(d: Path):
    (d / "scan.bin").write_bytes(np.random.default_rng(3).bytes(4096))
    return d / "scan.bin", ["unsupported"]


def _text_named_png(d: Path):
    (d / "slice.png").write_text("<html>not an image</html>")
    return d / "slice.png", ["image"]


def _nifti_4d(d: Path):
    return write_nifti(d / "fmri.nii.gz", np.zeros((16, 16, 8, 5), np.int16)), ["4-D", "5 volumes"]


def _nifti_5d(d: Path):
    return write_nifti(d / "five.nii.gz", np.zeros((16, 16, 8, 2, 2), np.int16)), ["5-D"]


def _nifti_rgb24(d: Path):
    rgb = np.zeros((16, 16, 1), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    return write_nifti(d / "rgb24.nii.gz", rgb), ["RGB"]


def _nifti_rgba32(d: Path):
    rgba = np.zeros((16, 16, 1), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1"), ("A", "u1")])
    return write_nifti(d / "rgba32.nii.gz", rgba), ["RGB"]


def _nifti_rgb_axis(d: Path):
    return write_nifti(d / "rgb_axis.nii.gz", np.zeros((16, 16, 1, 3), np.uint8)), ["colour"]


def _nifti_rgba_vector(d: Path):
    path = write_nifti(d / "rgba_vector.nii.gz", np.zeros((16, 16, 1, 1, 4), np.uint8), intent_code=1007)
    return path, ["colour"]


def _nifti_complex(d: Path):
    return write_nifti(d / "complex.nii.gz", np.zeros((16, 16, 4), np.complex64)), ["complex"]


def _nifti_nan(d: Path):
    data = _small()
    data[3, 4, 5] = np.nan
    return write_nifti(d / "nan.nii.gz", data), ["NaN"]


def _nifti_inf(d: Path):
    data = _small()
    data[0, 0, 0] = np.inf
    return write_nifti(d / "inf.nii.gz", data), ["infinite"]


def _nifti_1x1(d: Path):
    return write_nifti(d / "pixel.nii.gz", np.full((1, 1, 1), -500, np.int16)), ["1x1", "too small"]


def _png_1x1(d: Path):
    return save_png(d / "pixel.png", np.zeros((1, 1), np.uint8)), ["1x1", "too small"]


def _npy_line(d: Path):
    np.save(d / "line.npy", np.zeros((1, 300), np.int16))
    return d / "line.npy", ["1x300", "too small"]


def _nii_absurd(d: Path):
    (d / "huge.nii").write_bytes(nifti_bytes_claiming((100000, 100000, 1000), version=2))
    return d / "huge.nii", ["100000x100000x1000"]


def _nii_gz_absurd(d: Path):
    (d / "huge.nii.gz").write_bytes(gzip.compress(nifti_bytes_claiming((32767, 32767, 32767))))
    return d / "huge.nii.gz", ["32767x32767x32767"]


def _nifti_negative_dim(d: Path):
    raw = bytearray(nifti_bytes_claiming((16, 16, 4), payload=16 * 16 * 4 * 2))
    raw[42:44] = struct.pack("<h", -16)  # dim[1]
    (d / "negative.nii").write_bytes(bytes(raw))
    return d / "negative.nii", ["negative"]


def _nifti_zero_dim(d: Path):
    raw = bytearray(nifti_bytes_claiming((16, 16, 4), payload=0))
    raw[46:48] = struct.pack("<h", 0)  # dim[3]
    (d / "nodata.nii").write_bytes(bytes(raw))
    return d / "nodata.nii", ["no voxels"]


def _nii_gz_too_big_for_file(d: Path):
    # 600 MB of voxels claimed by a 1 kB file: fits in memory, but no deflate stream that small can hold it
    (d / "liar.nii.gz").write_bytes(gzip.compress(nifti_bytes_claiming((512, 512, 600), dtype=np.float32)))
    return d / "liar.nii.gz", ["512x512x600", "truncated"]


def _png_absurd(d: Path):
    (d / "bomb.png").write_bytes(png_bytes(100000, 100000))
    return d / "bomb.png", ["10,000,000,000 pixels", "too large"]


def _npy_absurd(d: Path):
    np.save(d / "small.npy", np.zeros((2, 2), np.int16))
    raw = (d / "small.npy").read_bytes().replace(b"(2, 2)", b"(100000, 100000, 1000)")
    (d / "small.npy").unlink()
    (d / "huge.npy").write_bytes(raw)
    return d / "huge.npy", ["100000x100000x1000"]


def _npy_truncated(d: Path):
    np.save(d / "full.npy", np.zeros((4, 32, 32), np.int16))
    raw = (d / "full.npy").read_bytes()
    (d / "full.npy").unlink()
    (d / "cut.npy").write_bytes(raw[: len(raw) // 2])
    return d / "cut.npy", ["truncated"]


def _npy_object(d: Path):
    marker = d / "UNPICKLED"
    np.save(d / "objects.npy", np.array([_Unpickled(marker), 1], dtype=object), allow_pickle=True)
    return d / "objects.npy", ["Python objects"]


def _npy_complex(d: Path):
    np.save(d / "complex.npy", np.zeros((4, 16, 16), np.complex128))
    return d / "complex.npy", ["complex"]


def _nifti_with_pixdim(path: Path, pixdim, qform_code: int) -> Path:
    """A raw NIfTI-1 (no sform) with the given pixdim[1..3]; nibabel's writer would "repair" them, so patch bytes."""
    raw = bytearray(nifti_bytes_claiming((12, 16, 10), dtype=np.float32, payload=12 * 16 * 10 * 4))
    raw[80:92] = struct.pack("<3f", *pixdim)  # pixdim[1..3]
    raw[252:256] = struct.pack("<hh", qform_code, 0)  # qform_code, sform_code
    path.write_bytes(bytes(raw))
    return path


def _nifti_zero_pixdim(d: Path):
    return _nifti_with_pixdim(d / "pixdim0.nii", (0.0, 0.0, 0.0), qform_code=1), ["voxel size", "pixdim"]


def _nifti_nan_pixdim(d: Path):
    return _nifti_with_pixdim(d / "pixdim_nan.nii", (np.nan, 1.0, 1.0), qform_code=0), ["voxel size", "pixdim"]


def _nifti_zero_affine(d: Path):
    img = nib.Nifti1Image(_small(), np.eye(4))
    img.header.set_qform(None, code=0)
    img.set_sform(np.zeros((4, 4)), code=2)
    nib.save(img, str(d / "zero_affine.nii.gz"))
    return d / "zero_affine.nii.gz", ["degenerate"]


def _nifti_flat_affine(d: Path):
    affine = np.eye(4)
    affine[:3, 2] = affine[:3, 1]  # two voxel axes point the same way: a flat, rank-2 matrix
    img = nib.Nifti1Image(_small(), affine)
    img.header.set_qform(None, code=0)
    nib.save(img, str(d / "flat_affine.nii.gz"))
    return d / "flat_affine.nii.gz", ["degenerate"]


def _dicom_no_pixels(d: Path):
    return write_dicom(d / "nopix.dcm", np.zeros((16, 16), np.int16), pixel_data=False), ["no pixel data"]


def _dicom_folder_no_pixels(d: Path):
    folder = d / "series_nopix"
    folder.mkdir()
    for i in range(3):
        write_dicom(folder / f"{i}.dcm", np.zeros((16, 16), np.int16), z=i, series="1.2.9", pixel_data=False)
    return folder, ["no pixel data"]


def _dicom_short_pixels(d: Path):
    path = write_dicom(d / "short.dcm", np.zeros((16, 16), np.int16))
    import pydicom

    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[:100]
    ds.save_as(path, enforce_file_format=True)
    return path, ["pixel data"]


def _dicom_mr(d: Path):
    return write_dicom(d / "brain.dcm", np.zeros((16, 16), np.int16), modality="MR"), ["MR", "not CT"]


def _dicom_mr_series(d: Path):
    return write_series(d / "mr_series", modality="MR"), ["MR", "not CT"]


def _dicom_duplicate_positions(d: Path):
    folder = d / "repeated"
    folder.mkdir()
    for i in range(3):  # three different images at one position
        write_dicom(folder / f"{i}.dcm", np.full((16, 16), 10 * i, np.int16), z=5.0, series="1.2.7")
    return folder, ["two different images at one slice position"]


def _dicom_absurd_rows(d: Path):
    """30 files claiming 65535x65535 pixels each: 480 GiB as float32, far more than any test machine has."""
    import pydicom

    folder = d / "absurd_series"
    folder.mkdir()
    first = write_dicom(folder / "0.dcm", np.zeros((16, 16), np.int16), z=0, series="1.2.8")
    ds = pydicom.dcmread(first)
    ds.Rows = ds.Columns = 65535
    for i in range(30):
        ds.ImagePositionPatient = [-20.0, -15.0, float(i)]
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
    return folder, ["65535x65535", "memory"]


def _dicom_rgb(d: Path):
    import pydicom

    path = write_dicom(d / "colour.dcm", np.zeros((16, 16), np.int16))
    ds = pydicom.dcmread(path)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = np.zeros((16, 16, 3), np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path, ["greyscale"]


def _dicom_bad_geometry(d: Path):
    import pydicom

    folder = d / "bad_geometry"
    write_series(folder, n=3)
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = [1.0, 2.0]  # two coordinates instead of three
        ds.save_as(f, enforce_file_format=True)
    return folder, ["geometry"]


def _dicom_truncated(d: Path):
    path = write_dicom(d / "cut.dcm", np.zeros((64, 64), np.int16))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 4000])
    return path, ["cut.dcm"]


def _dicom_folder_without_images(d: Path):
    """DICOM files without Rows/Columns (a structured report, say): no image to read."""
    import pydicom

    folder = d / "reports"
    folder.mkdir()
    path = write_dicom(folder / "sr.dcm", np.zeros((16, 16), np.int16), pixel_data=False)
    ds = pydicom.dcmread(path)
    del ds.Rows, ds.Columns
    ds.Modality = "SR"
    ds.save_as(path, enforce_file_format=True)
    return folder, ["no readable DICOM image"]


def _empty_folder(d: Path):
    (d / "nothing").mkdir()
    return d / "nothing", ["empty"]


def _folder_non_images(d: Path):
    folder = d / "docs"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    (folder / "table.csv").write_text("a,b\n1,2\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "data.json").write_text("{}")
    return folder, ["no DICOM"]


def _folder_png_sizes(d: Path):
    folder = d / "slices"
    folder.mkdir()
    save_png(folder / "1.png", np.zeros((32, 32), np.uint8))
    save_png(folder / "2.png", np.zeros((32, 40), np.uint8))
    return folder, ["differ in size"]


def _folder_bad_png(d: Path):
    folder = d / "slices_bad"
    folder.mkdir()
    save_png(folder / "1.png", np.zeros((32, 32), np.uint8))
    (folder / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    return folder, ["2.png", "not a readable image"]


def _odd_name(d: Path):
    path = d / "my scan – Müller 肺 (2).nii.gz"
    path.write_bytes(b"")
    return path, ["my scan – Müller 肺 (2).nii.gz", "empty"]


def _long_name(d: Path):
    path = d / ("x" * 240 + ".nii.gz")
    path.write_bytes(b"not gzip at all")
    return path, ["x" * 240]


def _name_too_long(d: Path):
    return d / ("y" * 300 + ".nii.gz"), ["name too long"]


def _dir_named_nii(d: Path):
    (d / "scan.nii.gz").mkdir()
    return d / "scan.nii.gz", ["is a folder"]


def _unreadable(d: Path):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading (see folder_named_nii_gz)")
    path = write_nifti(d / "locked.nii.gz", _small())
    path.chmod(0)
    return path, ["permission denied"]


def _symlink_loop(d: Path):
    (d / "a.nii.gz").symlink_to(d / "b.nii.gz")
    (d / "b.nii.gz").symlink_to(d / "a.nii.gz")
    return d / "a.nii.gz", ["symbolic link"]


def _dangling_symlink(d: Path):
    (d / "link.nii.gz").symlink_to(d / "gone.nii.gz")
    return d / "link.nii.gz", ["symbolic link", "gone.nii.gz"]


def _fifo(d: Path):
    os.mkfifo(d / "pipe.nii.gz")  # reading it would block forever: it must be refused, not opened
    return d / "pipe.nii.gz", ["not a regular file"]


CASES = {
    "empty_nii_gz": _empty("empty.nii.gz"),
    "empty_nii": _empty("empty.nii"),
    "empty_dcm": _empty("empty.dcm"),
    "empty_png": _empty("empty.png"),
    "empty_npy": _empty("empty.npy"),
    "nii_truncated_half": _nii_half,
    "nii_header_only": _nii_header_only,
    "nii_gz_truncated_half": _nii_gz_half,
    "nii_gz_corrupt_deflate": _nii_gz_corrupt,
    "gzip_magic_then_garbage": _gzip_garbage,
    "png_bytes_named_nii_gz": _png_named_nii_gz,
    "text_named_dcm": _text_named_dcm,
    "random_bytes_nii": _random_nii,
    "random_bytes_nii_gz": _random_nii_gz,
    "random_bytes_unknown_suffix": _random_unknown,
    "text_named_png": _text_named_png,
    "nifti_4d": _nifti_4d,
    "nifti_5d": _nifti_5d,
    "nifti_rgb24_dtype": _nifti_rgb24,
    "nifti_rgba32_dtype": _nifti_rgba32,
    "nifti_trailing_rgb_axis": _nifti_rgb_axis,
    "nifti_rgba_vector_5d": _nifti_rgba_vector,
    "nifti_complex": _nifti_complex,
    "nifti_nan": _nifti_nan,
    "nifti_inf": _nifti_inf,
    "nifti_1x1": _nifti_1x1,
    "png_1x1": _png_1x1,
    "npy_1x300_line": _npy_line,
    "nii_absurd_header_dims": _nii_absurd,
    "nii_gz_absurd_header_dims": _nii_gz_absurd,
    "nii_gz_claims_more_than_file_holds": _nii_gz_too_big_for_file,
    "nifti_negative_dim": _nifti_negative_dim,
    "nifti_zero_dim": _nifti_zero_dim,
    "png_absurd_header_dims": _png_absurd,
    "npy_absurd_header_shape": _npy_absurd,
    "npy_truncated": _npy_truncated,
    "npy_object_dtype": _npy_object,
    "npy_complex": _npy_complex,
    "nifti_zero_pixdim": _nifti_zero_pixdim,
    "nifti_nan_pixdim": _nifti_nan_pixdim,
    "nifti_all_zero_affine": _nifti_zero_affine,
    "nifti_rank_deficient_affine": _nifti_flat_affine,
    "dicom_without_pixel_data": _dicom_no_pixels,
    "dicom_folder_without_pixel_data": _dicom_folder_no_pixels,
    "dicom_short_pixel_data": _dicom_short_pixels,
    "dicom_mr_file": _dicom_mr,
    "dicom_mr_series": _dicom_mr_series,
    "dicom_duplicate_positions": _dicom_duplicate_positions,
    "dicom_absurd_rows_columns": _dicom_absurd_rows,
    "dicom_rgb": _dicom_rgb,
    "dicom_malformed_position": _dicom_bad_geometry,
    "dicom_truncated_pixel_data": _dicom_truncated,
    "dicom_folder_without_images": _dicom_folder_without_images,
    "empty_folder": _empty_folder,
    "folder_of_non_images": _folder_non_images,
    "png_folder_mixed_sizes": _folder_png_sizes,
    "png_folder_one_corrupt": _folder_bad_png,
    "odd_name_spaces_unicode": _odd_name,
    "very_long_name": _long_name,
    "name_too_long_for_filesystem": _name_too_long,
    "folder_named_nii_gz": _dir_named_nii,
    "named_pipe": _fifo,
    "unreadable_chmod_000": _unreadable,
    "symlink_loop": _symlink_loop,
    "dangling_symlink": _dangling_symlink,
}

# A bare exception class name (ValueError, ImageFileError, ...) in the line means a library message leaked through.
_CLASS_NAME = re.compile(r"\b[A-Z]\w*(Error|Exception|Warning)\b")


@pytest.fixture
def case(request, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    path, words = CASES[request.param](folder)
    return path, words, tmp_path / "out.nii.gz"


def _check_error_line(err: str, path: Path, words: list[str]) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
    line = lines[0]
    assert line.startswith("covidseg: error: "), line
    assert "Traceback" not in line and not _CLASS_NAME.search(line), line
    assert path.name[:200] in line, f"the message should name {path.name!r}: {line}"
    for word in words:
        assert word.lower() in line.lower(), f"{word!r} missing from: {line}"
    return line


def _snapshot(path: Path):
    """Bytes of the input (every file of a folder); None for what cannot be read (a FIFO, a loop, chmod 000)."""
    try:
        if path.is_dir():
            return {str(p): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
        return path.read_bytes() if path.is_file() else None
    except OSError:
        return None


@pytest.mark.parametrize("case", list(CASES), indirect=True)
def test_segment_refuses_with_one_readable_line(case, capsys):
    path, words, out = case
    before = _snapshot(path)
    code = main(["segment", str(path), "-o", str(out), "--device", "cpu"])
    assert _snapshot(path) == before, "the input changed"
    captured = capsys.readouterr()
    assert code == 2, captured.err
    _check_error_line(captured.err, path, words)
    assert captured.out == ""
    assert not out.exists() and [p.name for p in out.parent.iterdir()] == ["in"]  # no output, no temporary file
    assert not (path.parent / "UNPICKLED").exists(), "a .npy was unpickled"


@pytest.mark.parametrize("case", list(CASES), indirect=True)
def test_napari_reader_raises_input_error(case):
    path, words, _ = case
    if len(path.name) <= 255:  # _napari_io.get_reader: Path.is_dir() raises OSError on names over 255 bytes
        get_reader(str(path))  # claiming or declining must not raise
    with pytest.raises(InputError) as info:
        read_ct(str(path))
    assert str(path.name)[:200] in str(info.value)
    assert not (path.parent / "UNPICKLED").exists(), "a .npy was unpickled"


def test_the_unpickling_marker_works(tmp_path):
    """The object .npy of the corpus really runs code when unpickled, so the marker check above means something."""
    path, _ = _npy_object(tmp_path)
    np.load(path, allow_pickle=True)
    assert (tmp_path / "UNPICKLED").exists()


_REAL_STDERR_SCRIPT = """
import sys
from pathlib import Path
from tests.test_bad_inputs import CASES
from napari_covidseg.cli import main
root = Path(sys.argv[1])
for name, build in CASES.items():
    folder = root / name
    folder.mkdir()
    try:
        path, _ = build(folder)
    except BaseException:  # pytest.skip
        continue
    print(f"=== {name}", file=sys.stderr, flush=True)
    code = main(["segment", str(path), "-o", str(root / "out.nii.gz"), "--device", "cpu"])
    sys.stderr.flush()
    print(f"=== exit {code}", file=sys.stderr, flush=True)
"""


def test_real_stderr_has_one_line_per_case(tmp_path):
    """In a fresh process, nothing else reaches stderr: no library warnings, no nibabel log lines."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # show every warning once, as a user would see it
    result = subprocess.run(
        [sys.executable, "-c", _REAL_STDERR_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    blocks = re.findall(r"=== (\w+)\n(.*?)=== exit (\d+)\n", result.stderr, flags=re.S)
    assert len(blocks) >= 30, result.stderr[-3000:]
    for name, text, code in blocks:
        lines = text.strip().splitlines()
        assert code == "2" and len(lines) == 1 and lines[0].startswith("covidseg: error: "), (name, text)


def test_leading_dash_name_goes_after_double_dash(tmp_path, monkeypatch, capsys):
    """`-scan.nii.gz` looks like an option; after `--` it is read as the input (here: an empty file)."""
    monkeypatch.chdir(tmp_path)
    Path("-scan.nii.gz").write_bytes(b"")
    code = main(["segment", "-o", "out.nii.gz", "--device", "cpu", "--", "-scan.nii.gz"])
    err = capsys.readouterr().err
    assert code == 2
    _check_error_line(err, Path("-scan.nii.gz"), ["empty"])
    code = main(["segment", "-scan.nii.gz", "-o", "out.nii.gz"])  # without `--`: a usage error with a hint
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("covidseg")
    assert "'--'" in err
    assert not Path("out.nii.gz").exists()


# ------------------------------------------------------------------------------------------------ valid look-alikes


@pytest.mark.parametrize("value", [-1000.0, 0.0])
def test_constant_volume_segments_to_an_empty_mask(value, tmp_path, capsys):
    """A constant scan (all air, all water) is valid input without a body: it segments to all background."""
    ct = write_nifti(tmp_path / "constant.nii.gz", np.full((64, 64, 2), value, np.float32))
    code = main(["segment", str(ct), "-o", str(tmp_path / "m.nii.gz"), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["output"] == str(tmp_path / "m.nii.gz")
    mask = nib.load(str(tmp_path / "m.nii.gz"))
    assert mask.shape == (64, 64, 2) and not np.asanyarray(mask.dataobj).any()


def test_dicom_without_rescale_tags_reads_raw_values(tmp_path):
    """No RescaleSlope/RescaleIntercept means slope 1, intercept 0 (DICOM PS3.3 C.11.1.1.2): raw values are HU."""
    hu = np.arange(-600, -600 + 24 * 20, dtype=np.int16).reshape(24, 20)
    path = write_dicom(tmp_path / "raw.dcm", hu, rescale=False)
    import pydicom

    assert "RescaleSlope" not in pydicom.dcmread(path) and "RescaleIntercept" not in pydicom.dcmread(path)
    vol = load_ct(path)
    assert vol.intensity == "HU" and vol.shape == (1, 24, 20)
    np.testing.assert_array_equal(np.sort(vol.array.ravel()), np.sort(hu.astype(np.float32).ravel()))
    assert vol.array.min() == -600


def test_folder_with_two_series_of_different_geometry_takes_the_larger_and_says_so(tmp_path, capsys):
    folder = tmp_path / "mixed"
    write_series(folder, n=4, rows=24, cols=20, value=-700, series="1.2.826.0.1.111111")
    write_series(folder, n=2, rows=32, cols=32, value=100, series="1.2.826.0.1.222222", z0=50.0)
    vol = load_ct(folder)
    assert vol.shape == (4, 24, 20) and (vol.array == -700).all()
    assert any("2 series" in n and "largest" in n for n in vol.meta["notes"])
    code = main(["segment", str(folder), "-o", str(tmp_path / "m.nii.gz"), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "covidseg: note: 2 series found" in captured.err


def test_negative_determinant_affine_is_valid(tmp_path):
    """A left-handed voxel grid (det < 0, e.g. radiological NIfTI) is ordinary input, not a degenerate matrix."""
    data = np.random.default_rng(0).integers(-1000, 500, (16, 12, 4)).astype(np.int16)
    vol = load_ct(write_nifti(tmp_path / "lefthanded.nii.gz", data, np.diag([-0.8, 0.8, 2.5, 1.0])))
    assert np.linalg.det(vol.affine[:3, :3]) < 0
    assert vol.shape == (4, 12, 16) and vol.spacing == pytest.approx((2.5, 0.8, 0.8))


@pytest.mark.parametrize("name", ["my scan – Müller 肺 (2).nii.gz", "-scan.nii.gz", "z" * 240 + ".nii.gz"])
def test_valid_scan_with_odd_name_segments(name, tmp_path, capsys):
    ct = write_nifti(tmp_path / name, np.full((64, 64, 2), -1000.0, np.float32))
    out = tmp_path / f"mask {name}"
    code = main(["segment", "-o", str(out), "--device", "cpu", "--", str(ct)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert nib.load(str(out)).shape == (64, 64, 2)


@pytest.mark.parametrize("output", ["notes.txt/mask.nii.gz", "mask.png", "a_folder", "m" * 260 + ".nii.gz"])
def test_unusable_output_path_is_one_line(output, tmp_path, capsys):
    """Output inside a file, with the wrong suffix, onto a folder, or too long a name: one line, exit 2."""
    ct = write_nifti(tmp_path / "ct.nii.gz", np.full((64, 64, 2), -1000.0, np.float32))
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    (tmp_path / "a_folder").mkdir()
    code = main(["segment", str(ct), "-o", str(tmp_path / output), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("covidseg: error: "), captured.err
    assert not _CLASS_NAME.search(lines[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_folder", "ct.nii.gz", "notes.txt"]
