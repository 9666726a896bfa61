"""I/O round trips: what is loaded, segmented and saved lands on the same voxels of the original scan."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest

from napari_covidseg.errors import InputError
from napari_covidseg.io import load_ct, save_labels
from tests.conftest import shared

TS = "totalsegmentator_example_ct"


def _world(volume, zyx: np.ndarray) -> np.ndarray:
    """World RAS coordinates of display voxel indices (N, 3)."""
    return (volume.display_affine @ np.c_[zyx, np.ones(len(zyx))].T).T[:, :3]


def _sample_voxels(shape, n=200, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, s, n) for s in shape], axis=1)


def test_nifti_display_orientation_and_world_coordinates():
    path = shared(f"{TS}/example_ct.nii.gz")
    vol = load_ct(path)
    img = nib.load(str(path))
    assert img.shape == (122, 101, 112)
    assert vol.shape == (112, 101, 122)  # (z, y, x): the RAS file is reoriented to (S, P, L)
    assert vol.spacing == (3.0, 3.0, 3.0)
    assert vol.intensity == "HU"
    assert nib.aff2axcodes(vol.display_affine) == ("S", "P", "L")
    # every display voxel holds the value of the original voxel at the same world position
    original = np.asanyarray(img.dataobj)
    zyx = _sample_voxels(vol.shape)
    ijk = np.rint((np.linalg.inv(img.affine) @ np.c_[_world(vol, zyx), np.ones(len(zyx))].T).T[:, :3]).astype(int)
    np.testing.assert_array_equal(vol.array[tuple(zyx.T)], original[tuple(ijk.T)])


def test_nifti_mask_round_trip_lands_on_same_voxels(tmp_path):
    path = shared(f"{TS}/example_ct.nii.gz")
    vol = load_ct(path)
    mask = (vol.array > 200).astype(np.uint8)  # bone, an asymmetric structure
    mask[vol.array < -900] = 2
    out = save_labels(mask, like=vol, path=tmp_path / "mask.nii.gz")
    saved, original = nib.load(str(out)), nib.load(str(path))
    np.testing.assert_allclose(saved.affine, original.affine)
    assert saved.shape == original.shape
    expected = np.where(np.asanyarray(original.dataobj) > 200, 1, 0)
    expected[np.asanyarray(original.dataobj) < -900] = 2
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj), expected)
    assert saved.get_data_dtype() == np.uint8
    # and reading it back gives the display mask again
    np.testing.assert_array_equal(load_ct(out).array.astype(np.uint8), mask)


def test_dicom_series_sorted_by_position_in_hu_with_geometry():
    folder = shared(f"{TS}/example_ct_dicom")
    vol = load_ct(folder)
    files = sorted(folder.glob("*.dcm"))
    assert vol.shape == (len(files), 512, 512)
    np.testing.assert_allclose(vol.spacing, (2.0, 0.9765625, 0.9765625))
    assert vol.meta["tags"]["Modality"] == "CT"
    # independent check: world position of display voxels -> read that pixel straight from the DICOM file
    datasets = [pydicom.dcmread(f) for f in files]
    zyx = _sample_voxels(vol.shape, n=100)
    world_lps = _world(vol, zyx) * np.array([-1, -1, 1])
    for (z, y, x), w in zip(zyx, world_lps):
        ds = min(
            datasets,
            key=lambda d: abs(
                float(
                    np.subtract(w, np.array(d.ImagePositionPatient, float))
                    @ np.cross(*np.reshape(d.ImageOrientationPatient, (2, 3)))
                )
            ),
        )
        iop = np.reshape(np.array(ds.ImageOrientationPatient, float), (2, 3))
        rel = w - np.array(ds.ImagePositionPatient, float)
        col = int(round(rel @ iop[0] / float(ds.PixelSpacing[1])))
        row = int(round(rel @ iop[1] / float(ds.PixelSpacing[0])))
        hu = ds.pixel_array[row, col] * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert vol.array[z, y, x] == pytest.approx(hu)


def test_dicom_mask_round_trip_world_coordinates(tmp_path):
    folder = shared(f"{TS}/example_ct_dicom")
    vol = load_ct(folder)
    mask = (vol.array > 150).astype(np.uint8)
    saved = nib.load(str(save_labels(mask, like=vol, path=tmp_path / "m.nii.gz")))
    data = np.asanyarray(saved.dataobj)
    zyx = np.argwhere(mask)[::997]
    ijk = np.rint((np.linalg.inv(saved.affine) @ np.c_[_world(vol, zyx), np.ones(len(zyx))].T).T[:, :3]).astype(int)
    assert (data[tuple(ijk.T)] == 1).all()
    assert int(data.sum()) == int(mask.sum())


def test_dicom_series_is_order_independent(tmp_path):
    """Slices named in the reverse order of their position load exactly as when named in order."""
    files = sorted(shared(f"{TS}/example_ct_dicom").glob("*.dcm"))[:6]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for i, f in enumerate(files):
        (tmp_path / "a" / f"{i:03d}.dcm").write_bytes(f.read_bytes())
        (tmp_path / "b" / f"img{5 - i:03d}").write_bytes(f.read_bytes())  # no suffix: found by the DICM magic
    a, b = load_ct(tmp_path / "a"), load_ct(tmp_path / "b")
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.affine, b.affine)
    z_world = _world(a, np.array([[z, 0, 0] for z in range(a.shape[0])]))[:, 2]
    assert np.all(np.diff(z_world) > 0), "display z must run inferior -> superior"


def test_several_series_take_largest_and_say_so(tmp_path):
    big = sorted(shared(f"{TS}/example_ct_dicom").glob("*.dcm"))[:4]
    for f in big:
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "other.dcm").write_bytes(shared("pydicom_ct_small/CT_small.dcm").read_bytes())
    vol = load_ct(tmp_path)
    assert vol.shape[0] == 4
    assert any("2 series" in n and "largest" in n for n in vol.meta["notes"])


def test_single_dicom_file_rescaled_to_hu():
    vol = load_ct(shared("pydicom_ct_small/CT_small.dcm"))
    assert vol.shape == (1, 128, 128)
    assert vol.intensity == "HU"
    assert -1100 < vol.array.min() < -800 and vol.array.max() > 1000


def test_png_slice_is_display_intensity(tmp_path):
    from PIL import Image

    arr = (np.arange(30 * 40) % 256).astype(np.uint8).reshape(30, 40)
    Image.fromarray(arr).save(tmp_path / "s.png")
    Image.fromarray(np.stack([arr] * 3, -1)).save(tmp_path / "rgb.jpg", quality=100)
    vol = load_ct(tmp_path / "s.png")
    assert vol.intensity == "display" and vol.shape == (1, 30, 40)
    np.testing.assert_array_equal(vol.array[0], arr)
    rgb = load_ct(tmp_path / "rgb.jpg")  # colour JPGs become greyscale
    assert rgb.shape == (1, 30, 40) and rgb.intensity == "display"
    out = save_labels((vol.array > 100).astype(np.uint8), like=vol, path=tmp_path / "m.nii.gz")
    np.testing.assert_array_equal(load_ct(out).array[0], (arr > 100).astype(np.float32))


def test_npy_volume_and_slice(tmp_path):
    np.save(tmp_path / "v.npy", np.full((3, 8, 9), -800, np.int16))
    np.save(tmp_path / "s.npy", np.zeros((8, 9), np.uint8))
    assert load_ct(tmp_path / "v.npy").shape == (3, 8, 9)
    assert load_ct(tmp_path / "v.npy").intensity == "HU"
    assert load_ct(tmp_path / "s.npy").shape == (1, 8, 9)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.nii.gz", b"", "empty"),
        ("trunc.nii.gz", b"\x1f\x8b\x08\x00garbage", "NIfTI"),
        ("notes.txt", b"hello", "unsupported"),
        ("bad.png", b"\x89PNG\r\n\x1a\nnope", "image"),
    ],
)
def test_bad_files_give_input_error(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=message):
        load_ct(tmp_path / name)


def test_missing_path_and_4d_and_nan(tmp_path):
    with pytest.raises(InputError, match="no such"):
        load_ct(tmp_path / "missing.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), tmp_path / "4d.nii.gz")
    with pytest.raises(InputError, match="4-D"):
        load_ct(tmp_path / "4d.nii.gz")
    data = np.zeros((4, 4, 4), np.float32)
    data[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(InputError, match="NaN"):
        load_ct(tmp_path / "nan.nii.gz")
