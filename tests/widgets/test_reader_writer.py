"""The npe2 reader and writer in a real viewer: scans open with their spacing, masks save in the scan's geometry."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from napari_covidseg._napari_io import get_reader, write_labels
from napari_covidseg.io import load_ct
from napari_covidseg.io.orientation import to_disk
from napari_covidseg.layers import GEOMETRY_KEY, labels_layer_kwargs
from napari_covidseg.sample import write_sample
from tests.conftest import shared

PLUGIN = "napari-covidseg"


def write_dicom_series(folder, n=6, rows=40, cols=48, spacing=(0.7, 0.8), step=2.5):
    """A small CT series (HU = raw - 1024) written in shuffled file order, as scanners often do."""
    folder.mkdir()
    series, study = generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 400, size=(n, rows, cols)).astype(np.int16)
    for i in rng.permutation(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"IM{i:04d}"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", series, study
        ds.InstanceNumber = int(n - i)  # deliberately not the spatial order
        ds.ImagePositionPatient = [-20.0, -15.0, 100.0 + step * i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = list(spacing)
        ds.SliceThickness = step
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (hu[i].astype(np.int32) + 1024).astype(np.uint16).tobytes()
        ds.save_as(folder / f"IM{i:04d}", enforce_file_format=True)
    return hu


def test_reader_claims_ct_files_and_folders_only(tmp_path):
    paths = write_sample(tmp_path / "sample", shape=(8, 64, 64))
    assert get_reader(str(paths["ct"])) is not None
    (tmp_path / "notes.txt").write_text("not a scan")
    (tmp_path / "empty").mkdir()
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "empty")) is None
    assert get_reader([str(paths["ct"]), str(paths["ct"])]) is None


def test_dicom_folder_opens_with_spacing_and_geometry(make_napari_viewer, tmp_path):
    hu = write_dicom_series(tmp_path / "series")
    viewer = make_napari_viewer()
    # napari's built-in reader also claims folders, so File > Open Folder asks which reader: this is our choice.
    layers = viewer.open(str(tmp_path / "series"), plugin=PLUGIN)
    assert len(layers) == 1
    layer = layers[0]
    assert layer.data.shape == hu.shape  # display order (z, y, x), z inferior -> superior = file positions
    np.testing.assert_allclose(layer.scale, (2.5, 0.7, 0.8))
    np.testing.assert_array_equal(layer.data, hu.astype(np.float32))  # sorted by position, rescaled to HU
    assert layer.metadata[GEOMETRY_KEY]["intensity"] == "HU"
    assert tuple(layer.contrast_limits) == (-1350.0, 150.0)


def test_real_dicom_series_opens_with_its_spacing(make_napari_viewer):
    folder = shared("totalsegmentator_example_ct/example_ct_dicom")
    expected = load_ct(folder)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(folder), plugin=PLUGIN)
    np.testing.assert_allclose(layer.scale, expected.spacing)
    assert layer.data.shape == expected.shape


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ""])
def test_writer_restores_the_source_geometry(make_napari_viewer, tmp_path, suffix):
    paths = write_sample(tmp_path / "sample", shape=(8, 64, 64))
    source = nib.load(paths["ct"])
    viewer = make_napari_viewer()
    (ct,) = viewer.open(str(paths["ct"]), plugin=PLUGIN)
    mask = np.zeros(ct.data.shape, dtype=np.uint8)
    mask[2, 10:20, 5:15] = 1  # an asymmetric block: any flip or transpose would move it
    mask[5, 40:44, 50:60] = 2
    like = {"scale": ct.scale, "translate": ct.translate, "metadata": ct.metadata}
    labels = viewer.add_labels(mask, **labels_layer_kwargs("corrected", like))
    out = tmp_path / f"corrected{suffix}"
    written = labels.save(str(out), plugin=PLUGIN)
    saved = nib.load(written[0])
    assert written[0].endswith((".nii.gz", ".nii"))
    np.testing.assert_allclose(saved.affine, source.affine)
    assert saved.shape == source.shape
    ornt = np.asarray(ct.metadata[GEOMETRY_KEY]["ornt"])
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj), to_disk(mask, ornt))
    # and it reads back onto the same display voxels
    np.testing.assert_array_equal(np.asanyarray(load_ct(written[0]).array).astype(np.uint8), mask)


def test_writer_without_plugin_geometry_uses_scale(tmp_path):
    mask = np.zeros((3, 10, 12), dtype=np.int32)
    mask[1, 2:4, 3:9] = 3
    (path,) = write_labels(str(tmp_path / "drawn.nii.gz"), mask, {"scale": [4.0, 0.5, 0.6], "metadata": {}})
    back = load_ct(path)
    np.testing.assert_allclose(back.spacing, (4.0, 0.5, 0.6))
    np.testing.assert_array_equal(back.array.astype(np.int32), mask)


def test_writer_refuses_float_labels(tmp_path):
    from napari_covidseg.errors import InputError

    with pytest.raises(InputError, match="integers"):
        write_labels(str(tmp_path / "x.nii.gz"), np.zeros((2, 4, 4), np.float32), {"name": "x"})
    assert not list(tmp_path.iterdir())


def _relabel_transfer_syntax(folder, uid):
    """Swap the TransferSyntaxUID of every file for ``uid`` (same padded length as Explicit VR Little Endian)."""
    old = str(ExplicitVRLittleEndian).encode().ljust(20, b"\0")
    for f in folder.iterdir():
        data = f.read_bytes()
        assert data.count(old) == 1
        f.write_bytes(data.replace(old, uid.encode().ljust(20, b"\0")))


@pytest.mark.parametrize("case", ["undecodable_dicom", "truncated_nifti"])
def test_bad_input_notification_starts_with_the_cause(make_napari_viewer, tmp_path, case):
    """napari would bury a reader's exception under "Tried to read <path> with plugin ...": the reader itself posts
    the notification, cause first and the path last, and adds no layer."""
    from napari.utils.notifications import notification_manager

    if case == "undecodable_dicom":
        write_dicom_series(tmp_path / "series")
        _relabel_transfer_syntax(tmp_path / "series", "1.2.826.0.1.36800.77")  # a private syntax, 20 characters
        path, cause = tmp_path / "series", "cannot decode private transfer syntax 1.2.826.0.1.36800.77"
    else:
        paths = write_sample(tmp_path / "sample", shape=(8, 64, 64))
        path = tmp_path / "cut.nii.gz"
        path.write_bytes(paths["ct"].read_bytes()[:300])
        cause = "cannot read"
    viewer = make_napari_viewer()
    before = len(notification_manager.records)
    layers = viewer.open(str(path), plugin=PLUGIN)
    assert layers == [] and len(viewer.layers) == 0
    messages = [str(r.message) for r in notification_manager.records[before:]]
    assert messages, "no notification"
    first_line = messages[-1].splitlines()[0]
    assert first_line.lower().startswith(cause), first_line
    assert first_line.endswith(path.name) or path.name in first_line  # the path comes last
    assert not first_line.startswith(str(tmp_path))


def test_a_repaired_series_opens_with_a_notification(make_napari_viewer, tmp_path):
    """A series with one slice file missing opens on the headers' grid (an empty slice where the file is missing),
    and napari says so instead of hiding it in the layer's metadata."""
    from napari.utils.notifications import notification_manager

    hu = write_dicom_series(tmp_path / "series", n=6)
    missing = next(f for f in (tmp_path / "series").iterdir() if f.name == "IM0003")  # position 100 + 2.5 * 3
    missing.unlink()
    viewer = make_napari_viewer()
    before = len(notification_manager.records)
    (layer,) = viewer.open(str(tmp_path / "series"), plugin=PLUGIN)
    assert layer.data.shape == hu.shape  # 6 positions, 5 files
    np.testing.assert_array_equal(layer.data[3], np.full(hu.shape[1:], -1024.0, np.float32))
    np.testing.assert_array_equal(layer.data[4], hu[4].astype(np.float32))  # later slices keep their place
    messages = [str(r.message) for r in notification_manager.records[before:]]
    assert any("missing" in m and "inserted" in m for m in messages), messages
