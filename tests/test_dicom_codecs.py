"""Compressed DICOM: each transfer syntax CT archives use opens with the same HU as the uncompressed series.

The series are built here from pydicom's uncompressed ``CT_small.dcm`` (a 128x128 GE CT slice, copied to
../shared/data/pydicom_ct_small) and re-encoded with the encoders pydicom and the decoder packages ship: RLE
(pydicom), JPEG 2000 lossless and lossy (pylibjpeg-openjpeg), JPEG-LS (pyjpegls, a test dependency), Deflate
(pydicom) and JPEG Baseline (8-bit, Pillow's encoder, encapsulated here). No Python package encodes JPEG Lossless
(Process 14), so that one is checked on the first slices of the real P002 series (JPEG Lossless SV1, as stored by the
hospital). A syntax no installed decoder handles gets one line that starts with the cause.
"""

from __future__ import annotations

import copy
import io
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

from napari_covidseg.cli import main
from napari_covidseg.errors import InputError
from napari_covidseg.io import load_ct
from napari_covidseg.io.dicom import DECODER_PACKAGES, undecodable_reason
from tests.conftest import shared

N_SLICES = 3
JPEG_XL_LOSSLESS = "1.2.840.10008.1.2.4.110"  # a real syntax (2024) that no Python DICOM decoder handles yet
PRIVATE_SYNTAX = "1.2.826.0.1.3680043.9.77"  # a private syntax label (same length as the placeholder below)


def _base_slices() -> list[pydicom.Dataset]:
    """Three slices of one series from CT_small (pixel values shifted per slice so the order is visible)."""
    src = pydicom.dcmread(shared("pydicom_ct_small/CT_small.dcm"))
    pixels = src.pixel_array
    series = generate_uid()
    out = []
    for i in range(N_SLICES):
        ds = copy.deepcopy(src)
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        x, y, z = (float(v) for v in src.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 5.0 * i]
        ds.PixelData = np.clip(pixels.astype(np.int32) + 40 * i, -32768, 32767).astype(np.int16).tobytes()
        out.append(ds)
    return out


def _write(folder: Path, slices: list[pydicom.Dataset], encode) -> Path:
    folder.mkdir(parents=True)
    for i, ds in enumerate(slices):
        ds = copy.deepcopy(ds)
        encode(ds)
        ds.save_as(folder / f"IM{i:04d}.dcm", enforce_file_format=True)
    return folder


def _uncompressed(ds):
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


def _compress(uid, **options):
    def encode(ds):
        ds.compress(uid, **options)

    return encode


def _deflate(ds):
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian


def _jpeg_baseline(ds):
    """8-bit JPEG Baseline (Process 1) as a secondary capture might store it: HU = pixel * 8 - 1024 (clipped at
    1016 HU)."""
    from PIL import Image

    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    pixels = np.clip(np.round((hu + 1024) / 8), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.RescaleSlope, ds.RescaleIntercept = 8, -1024
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit


@pytest.fixture(scope="module")
def slices():
    return _base_slices()


@pytest.fixture(scope="module")
def reference(slices, tmp_path_factory):
    return load_ct(_write(tmp_path_factory.mktemp("ref") / "series", slices, _uncompressed))


LOSSLESS = {
    "rle": _compress(RLELossless),
    "jpeg2000_lossless": _compress(JPEG2000Lossless),
    "jpegls_lossless": _compress(JPEGLSLossless),
    "deflate": _deflate,
}


@pytest.mark.parametrize("name", list(LOSSLESS))
def test_lossless_syntaxes_give_the_same_hu(name, slices, reference, tmp_path):
    if name == "jpegls_lossless":
        pytest.importorskip("jpeg_ls", reason="pyjpegls (test extra) encodes JPEG-LS")
    folder = _write(tmp_path / name, slices, LOSSLESS[name])
    stored = pydicom.dcmread(next(folder.iterdir())).file_meta.TransferSyntaxUID
    assert stored != ExplicitVRLittleEndian  # really written compressed
    volume = load_ct(folder)
    assert volume.array.shape == reference.array.shape == (N_SLICES, 128, 128)
    np.testing.assert_array_equal(volume.array, reference.array)
    np.testing.assert_allclose(volume.affine, reference.affine)


@pytest.mark.parametrize(
    ("name", "encode", "max_mean_error_hu"),
    [
        ("jpeg2000_lossy", _compress(JPEG2000, j2k_cr=[8]), 30.0),
        ("jpegls_near_lossless", _compress(JPEGLSNearLossless, jls_error=3), 3.0),
        ("jpeg_baseline", _jpeg_baseline, 12.0),
    ],
)
def test_lossy_syntaxes_decode_close_to_the_original(name, encode, max_mean_error_hu, slices, reference, tmp_path):
    if name == "jpegls_near_lossless":
        pytest.importorskip("jpeg_ls", reason="pyjpegls (test extra) encodes JPEG-LS")
    folder = _write(tmp_path / name, slices, encode)
    volume = load_ct(folder)
    assert volume.array.shape == reference.array.shape
    representable = (reference.array >= -1024) & (reference.array <= 1016)  # the 8-bit JPEG's range
    error = np.abs(volume.array.astype(np.float64) - reference.array)[representable]
    assert 0 < error.mean() <= max_mean_error_hu, (name, error.mean())
    # still the same anatomy in the same order: slice k is closest to reference slice k
    for k in range(N_SLICES):
        distances = [np.abs(volume.array[k] - reference.array[j]).mean() for j in range(N_SLICES)]
        assert int(np.argmin(distances)) == k


def test_jpeg_lossless_sv1_hospital_series(tmp_path):
    """The first slices of P002 (SIEMENS, JPEG Lossless Process 14 SV1): decoded HU look like a chest CT."""
    source = shared("covid_ct_md_dicom_P002/P002")
    folder = tmp_path / "p002"
    folder.mkdir()
    for f in sorted(source.iterdir())[:4]:
        shutil.copy(f, folder / f.name)
    first = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    assert first.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    volume = load_ct(folder)
    assert volume.array.shape == (4, 512, 512)
    hu = volume.array
    assert hu.min() <= -900  # air outside the body
    assert 0.05 < np.mean((hu > -950) & (hu < -500)) < 0.6  # lung parenchyma is a good share of a chest slice
    assert np.mean(hu > 300) < 0.1  # bone, a small share


@pytest.mark.parametrize("uid", [JPEG_XL_LOSSLESS, PRIVATE_SYNTAX])
def test_undecodable_syntax_is_one_line_that_starts_with_the_cause(uid, slices, tmp_path, capsys):
    folder = tmp_path / "series"
    folder.mkdir()
    placeholder = "1.2.826.0.1.3680043.9.99"  # private, as long as the UIDs above once padded to even length
    for i, ds in enumerate(slices):
        # Encapsulated pixel data under a syntax label nobody decodes: the header parses, the pixels cannot be
        # decoded, as with a real file in such a syntax. pydicom refuses to write syntaxes it does not know, so the
        # file is written under a private placeholder of the same length and the label swapped in the bytes.
        ds = copy.deepcopy(ds)
        ds.file_meta.TransferSyntaxUID = placeholder
        ds.PixelData = encapsulate([ds.PixelData])
        ds["PixelData"].VR = "OB"
        path = folder / f"IM{i:04d}.dcm"
        ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=True)
        data = path.read_bytes()
        assert data.count(placeholder.encode()) == 1
        path.write_bytes(data.replace(placeholder.encode(), uid.encode().ljust(len(placeholder), b"\0")))

    with pytest.raises(InputError) as info:
        load_ct(folder)
    message = str(info.value)
    assert message.startswith("cannot decode"), message
    assert uid in message and "\n" not in message
    assert "gdcmconv" in message  # what to do about it

    code = main(["segment", str(folder), "-o", str(tmp_path / "mask.nii.gz"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "cannot decode" in err[0] and uid in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "mask.nii.gz").exists()


def test_a_missing_decoder_names_the_packages_to_install(monkeypatch):
    """As on a machine where the decoder packages were not installed: the line says what to pip install."""
    from pydicom.pixels import get_decoder

    decoder_class = type(get_decoder(JPEG2000Lossless))
    monkeypatch.setattr(decoder_class, "is_available", property(lambda self: False))
    reason = undecodable_reason(str(JPEG2000Lossless))
    assert reason.startswith("cannot decode JPEG 2000 Image Compression (Lossless Only) (1.2.840.10008.1.2.4.90)")
    assert "pip install pylibjpeg pylibjpeg-openjpeg" in reason


def test_every_listed_syntax_decodes_here():
    """The dependencies cover every compressed syntax the message table names (JPEG, JPEG-LS, JPEG 2000, HTJ2K)."""
    for uid in [*DECODER_PACKAGES, str(RLELossless), str(DeflatedExplicitVRLittleEndian)]:
        assert undecodable_reason(uid) is None, uid
