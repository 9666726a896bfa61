"""The corrections store: slice geometry, image/mask pairs the trainer reads, the index, autosave, atomicity."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from napari_covidseg import corrections as corr
from napari_covidseg.errors import InputError
from napari_covidseg.io import load_ct, save_array
from napari_covidseg.io.labels import load_labels
from napari_covidseg.sample import make_phantom
from napari_covidseg.training.datasets import load_corrections
from tests.helpers import segmentation_card

SHAPE = (8, 64, 64)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(seed=1, shape=SHAPE, spacing=(5.0, 1.2, 1.2))


@pytest.fixture
def volume(phantom):
    return phantom.volume("Patient 01 (chest).nii.gz")


def _world(affine: np.ndarray, zyx) -> np.ndarray:
    zyx = np.atleast_2d(np.asarray(zyx, dtype=float))
    return (affine @ np.c_[zyx, np.ones(len(zyx))].T).T[:, :3]


def _check_slice_geometry(volume, tmp_path: Path) -> None:
    """Every slice: same world position as in ``volume``, and the same pixels after save_array + load_ct."""
    ny, nx = volume.shape[1:]
    yx = np.array([(0, 0), (ny - 1, 0), (0, nx - 1), (ny - 1, nx - 1), (ny // 2, nx // 3)])
    for z in sorted({0, volume.shape[0] // 2, volume.shape[0] - 1}):
        part = corr.slice_volume(volume, z)
        assert part.shape == (1, ny, nx)
        np.testing.assert_array_equal(part.array[0], volume.array[z])
        expected = _world(volume.display_affine, np.c_[np.full(len(yx), z), yx])
        np.testing.assert_allclose(_world(part.display_affine, np.c_[np.zeros(len(yx)), yx]), expected, atol=1e-6)
        path = save_array(part.array, part, tmp_path / f"slice{z}.nii.gz")
        back = load_ct(path)
        assert back.shape == (1, ny, nx) and back.intensity == volume.intensity
        np.testing.assert_array_equal(back.array, part.array)
        np.testing.assert_allclose(_world(back.display_affine, np.c_[np.zeros(len(yx)), yx]), expected, atol=1e-4)


def test_slice_volume_phantom_geometry_and_round_trip(volume, tmp_path):
    _check_slice_geometry(volume, tmp_path)


def test_slice_volume_of_a_nifti_stored_in_another_orientation(phantom, tmp_path):
    # Disk voxel order (z, x, y) pointing (I, R, A), slightly rotated: every display axis is permuted and flipped.
    disk = np.ascontiguousarray(phantom.ct[::-1, ::-1, ::-1].transpose(0, 2, 1))
    c, s = np.cos(0.1), np.sin(0.1)
    affine = np.array([[0, 1.2 * c, -1.2 * s, 10], [0, 1.2 * s, 1.2 * c, -20], [-5.0, 0, 0, 30], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(disk, affine), tmp_path / "odd.nii.gz")
    volume = load_ct(tmp_path / "odd.nii.gz")
    assert nib.aff2axcodes(affine) == ("I", "R", "A") and volume.shape == SHAPE
    _check_slice_geometry(volume, tmp_path)
    # also a phantom written by save_array (disk order x, y, z) and read back
    _check_slice_geometry(load_ct(save_array(phantom.ct, phantom.volume(), tmp_path / "ph.nii.gz")), tmp_path)


def test_slice_volume_of_display_images(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 50), dtype=np.uint8)).save(tmp_path / f"s{i}.png")
    volume = load_ct(tmp_path)
    assert volume.intensity == "display" and volume.shape == (3, 40, 50)
    (tmp_path / "out").mkdir()
    _check_slice_geometry(volume, tmp_path / "out")


def test_keys_and_default_dir(volume, monkeypatch, tmp_path):
    key = corr.scan_key(volume)
    assert key.startswith("patient-01-chest-") and len(key) == len("patient-01-chest-") + 8
    assert corr.scan_key(volume) == key
    other = make_phantom(seed=1, shape=(2, 8, 8)).volume("elsewhere/Patient 01 (chest).nii.gz")
    assert corr.scan_key(other) != key  # same name, other file
    long = make_phantom(seed=1, shape=(2, 8, 8)).volume("x" * 80 + ".nii")
    assert len(corr.scan_key(long)) == 40 + 9
    assert corr.correction_key(key, 7) == f"{key}_z0007"
    monkeypatch.setenv("COVIDSEG_HOME", str(tmp_path / "home"))
    assert corr.default_corrections_dir() == tmp_path / "home" / "corrections"
    monkeypatch.delenv("COVIDSEG_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert corr.default_corrections_dir() == tmp_path / "xdg" / "napari-covidseg" / "corrections"


def test_saved_pairs_are_read_by_load_corrections(volume, phantom, tmp_path):
    entries = corr.save_corrections(tmp_path, volume, phantom.lesions, [4, 1, 3, 1], model="tiny-unet")
    scan = corr.scan_key(volume)
    assert [e.z for e in entries] == [1, 3, 4]
    for e in entries:
        assert e.key == corr.correction_key(scan, e.z) and e.model == "tiny-unet" and e.source == volume.source
        assert e.classes == np.unique(phantom.lesions[e.z]).tolist()
        mask = load_labels(tmp_path / "masks" / f"{e.key}.nii.gz")
        np.testing.assert_array_equal(mask, phantom.lesions[e.z : e.z + 1])
        image = load_ct(tmp_path / "images" / f"{e.key}.nii.gz")
        assert image.intensity == "HU"
        np.testing.assert_array_equal(image.array, phantom.ct[e.z : e.z + 1])
    index_text = (tmp_path / "corrections.json").read_text()
    assert index_text == json.dumps(json.loads(index_text), sort_keys=True, indent=1)
    assert corr.list_corrections(tmp_path) == entries
    data = load_corrections(tmp_path, segmentation_card(size=64))
    assert len(data) == 3 and tuple(data.images.shape) == (3, 1, 64, 64)
    assert set(data.labels.unique().tolist()) <= {0, 1, 2, 3} and int(data.labels.max()) > 0


def _snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_saving_again_replaces_only_that_entry(volume, phantom, tmp_path):
    corr.save_corrections(tmp_path, volume, phantom.lesions, [2, 4])
    before = _snapshot(tmp_path)
    index_before = json.loads((tmp_path / "corrections.json").read_text())
    labels = phantom.lesions.copy()
    labels[2] = 0
    labels[2, 10:20, 10:20] = 2
    labels[4] = 1  # not saved: slice 4 is not asked for
    (entry,) = corr.save_corrections(tmp_path, volume, labels, [2])
    after = _snapshot(tmp_path)
    k2, k4 = (corr.correction_key(corr.scan_key(volume), z) for z in (2, 4))
    for name in (f"images/{k4}.nii.gz", f"masks/{k4}.nii.gz"):
        assert after[name] == before[name]
    assert set(after) == set(before)
    np.testing.assert_array_equal(load_labels(tmp_path / "masks" / f"{k2}.nii.gz"), labels[2:3])
    index_after = json.loads((tmp_path / "corrections.json").read_text())
    assert index_after[k4] == index_before[k4] and entry.classes == [0, 2]
    assert index_after[k2]["classes"] == [0, 2] and set(index_after) == {k2, k4}


@pytest.mark.parametrize(
    "labels, slices",
    [
        (np.zeros((7, 64, 64), np.uint8), [1]),  # shape mismatch
        (np.zeros(SHAPE, np.uint8), [8]),  # z out of range
        (np.zeros(SHAPE, np.uint8), [-1]),
        (np.zeros(SHAPE, np.uint8), [1.0]),  # not an integer index
        (np.zeros(SHAPE, np.float32), [1]),  # float labels
        (np.full(SHAPE, 256, np.int16), [1]),  # outside 0..255
        (np.full(SHAPE, -1, np.int16), [1]),
    ],
)
def test_bad_input_writes_nothing(volume, tmp_path, labels, slices):
    with pytest.raises(InputError):
        corr.save_corrections(tmp_path / "c", volume, labels, [0, *slices])
    assert not (tmp_path / "c").exists()
    with pytest.raises(InputError):
        corr.write_autosave(tmp_path / "c", volume, labels, slices)
    assert not (tmp_path / "c").exists()


def _failing_writer(real, fail_on: int, target_arg: int):
    """Replacement for a writer: call number ``fail_on`` writes garbage to its target (positional argument
    ``target_arg``, a path or an open file), then raises OSError; earlier calls go to the real writer."""
    calls = []

    def fake(*args, **kwargs):
        target = args[target_arg]
        calls.append(target)
        if len(calls) < fail_on:
            return real(*args, **kwargs)
        if hasattr(target, "write"):
            target.write(b"\x1f\x8b garbage")
        else:
            Path(target).write_bytes(b"\x1f\x8b garbage")
        raise OSError("disk full (injected)")

    return fake


@pytest.mark.parametrize("fail_on", [1, 2], ids=["image-write-fails", "mask-write-fails"])
def test_failure_mid_save_keeps_previous_files(volume, phantom, tmp_path, monkeypatch, fail_on):
    (entry,) = corr.save_corrections(tmp_path, volume, phantom.lesions, [3])
    mask_path = tmp_path / "masks" / f"{entry.key}.nii.gz"
    mask_bytes, index_bytes = mask_path.read_bytes(), (tmp_path / "corrections.json").read_bytes()
    monkeypatch.setattr(nib, "save", _failing_writer(nib.save, fail_on, target_arg=1))
    with pytest.raises(InputError, match="injected") as info:  # names the user's file, not the temporary one
        corr.save_corrections(tmp_path, volume, np.zeros(SHAPE, np.uint8), [3])
    assert "cannot write" in str(info.value) and "/." not in str(info.value)
    monkeypatch.undo()
    assert mask_path.read_bytes() == mask_bytes
    assert (tmp_path / "corrections.json").read_bytes() == index_bytes
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [f"{entry.key}.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == [f"{entry.key}.nii.gz"]
    # nothing but the pairs, the index and the (persistent, empty) lock file: no temporary file left
    assert sorted(p.name for p in tmp_path.iterdir()) == [corr.LOCK_NAME, "corrections.json", "images", "masks"]
    np.testing.assert_array_equal(load_ct(tmp_path / "images" / f"{entry.key}.nii.gz").array, phantom.ct[3:4])
    assert corr.list_corrections(tmp_path) == [entry]


def test_autosave_round_trip_and_rejections(volume, phantom, tmp_path):
    assert corr.read_autosave(tmp_path, volume) is None
    path = corr.write_autosave(tmp_path, volume, phantom.lesions, [5, 2, 5], {"model": "m", "scan": "ignored"})
    assert path == tmp_path / "autosave" / f"{corr.scan_key(volume)}.npz"
    saved = corr.read_autosave(tmp_path, volume)
    assert saved is not None and saved.path == path and saved.edited == [2, 5]
    assert saved.labels.dtype == np.uint8
    np.testing.assert_array_equal(saved.labels, phantom.lesions)
    assert saved.meta["model"] == "m" and saved.meta["scan"] == corr.scan_key(volume)
    assert saved.meta["shape"] == list(SHAPE) and saved.meta["source"] == volume.source and saved.meta["saved"]
    # same scan id, other shape -> not offered
    smaller = make_phantom(seed=1, shape=(4, 64, 64)).volume(volume.source)
    assert corr.scan_key(smaller) == corr.scan_key(volume) and corr.read_autosave(tmp_path, smaller) is None
    with pytest.raises(InputError):
        corr.write_autosave(tmp_path, volume, phantom.lesions, [1], {"bad": object()})
    corr.clear_autosave(tmp_path, volume)
    corr.clear_autosave(tmp_path, volume)  # absent: no error
    assert corr.read_autosave(tmp_path, volume) is None and not path.exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_autosave_is_ignored(volume, phantom, tmp_path, damage):
    path = corr.write_autosave(tmp_path, volume, phantom.lesions, [1])
    data = path.read_bytes()
    path.write_bytes({"garbage": b"not a zip at all", "truncated": data[: len(data) // 2], "empty": b""}[damage])
    assert corr.read_autosave(tmp_path, volume) is None


def test_crash_mid_autosave_keeps_previous(volume, phantom, tmp_path, monkeypatch):
    corr.write_autosave(tmp_path, volume, phantom.lesions, [1])
    monkeypatch.setattr(np, "savez_compressed", _failing_writer(np.savez_compressed, 1, target_arg=0))
    with pytest.raises(InputError, match="injected"):
        corr.write_autosave(tmp_path, volume, np.zeros(SHAPE, np.uint8), [2])
    monkeypatch.undo()
    saved = corr.read_autosave(tmp_path, volume)
    assert saved is not None and saved.edited == [1]
    np.testing.assert_array_equal(saved.labels, phantom.lesions)
    assert os.listdir(tmp_path / "autosave") == [saved.path.name]


def test_list_and_delete(volume, phantom, tmp_path):
    assert corr.list_corrections(tmp_path / "missing") == []
    entries = corr.save_corrections(tmp_path, volume, phantom.lesions, [1, 2, 3])
    (tmp_path / "masks" / f"{entries[1].key}.nii.gz").unlink()
    assert corr.list_corrections(tmp_path) == [entries[0], entries[2]]
    index = json.loads((tmp_path / "corrections.json").read_text())
    index["junk"] = {"key": "junk"}  # malformed entry: skipped
    (tmp_path / "corrections.json").write_text(json.dumps(index))
    assert corr.list_corrections(tmp_path) == [entries[0], entries[2]]

    assert corr.delete_correction(tmp_path, entries[0].key) is True
    assert corr.delete_correction(tmp_path, entries[0].key) is False
    assert not (tmp_path / "images" / f"{entries[0].key}.nii.gz").exists()
    assert corr.list_corrections(tmp_path) == [entries[2]]
    with pytest.raises(InputError):
        corr.delete_correction(tmp_path, "../corrections")

    # a damaged index is kept aside, never overwritten, and rebuilt from the pairs on disk
    (tmp_path / "corrections.json").write_text('{"truncated": ')
    notes: list[str] = []
    rebuilt = corr.list_corrections(tmp_path, notes)
    assert [e.key for e in rebuilt] == [entries[2].key] and rebuilt[0].classes == entries[2].classes
    assert len(notes) == 1 and "damaged" in notes[0] and "rebuilt" in notes[0]
    (kept,) = tmp_path.glob("corrections.json.damaged-*")
    assert kept.read_text() == '{"truncated": '
    (tmp_path / "corrections.json").write_text("[1, 2]")
    assert [e.key for e in corr.list_corrections(tmp_path)] == [entries[2].key]
    assert len(list(tmp_path.glob("corrections.json.damaged-*"))) == 2  # the first one kept too
    (entry,) = corr.save_corrections(tmp_path, volume, phantom.lesions, [5])
    assert [e.key for e in corr.list_corrections(tmp_path)] == sorted([entries[2].key, entry.key])


def test_index_lock_without_fcntl_uses_a_lock_file(volume, phantom, tmp_path, monkeypatch):
    """Where there is no fcntl (Windows), an O_EXCL lock file serialises index updates and is removed after;
    a stale lock file makes a save wait, then fail with one line instead of hanging."""
    import sys

    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` now raises ImportError
    corr.save_corrections(tmp_path, volume, phantom.lesions, [1, 2])
    assert [e.z for e in corr.list_corrections(tmp_path)] == [1, 2]
    assert not (tmp_path / corr.LOCK_NAME).exists()
    (tmp_path / corr.LOCK_NAME).write_text("")  # left behind by a crashed process
    monkeypatch.setattr(corr, "LOCK_TIMEOUT_S", 0.2)
    with pytest.raises(InputError, match="stayed locked"):
        corr.save_corrections(tmp_path, volume, phantom.lesions, [3])
