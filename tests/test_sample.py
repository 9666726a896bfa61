"""The synthetic phantom: HU of each tissue, labels where lesions were painted, orientation, NIfTI."""

from __future__ import annotations

import numpy as np
import pytest

from napari_covidseg.constants import CONSOLIDATION, EFFUSION, GGO, HU_LUNG
from napari_covidseg.sample import Phantom, make_phantom, write_sample

# Specified intensity ranges (HU) of the painted lesions, and the allowance for the phantom's noise
# (Gaussian, SD 12 HU, truncated at 36 HU): every voxel must lie within range +- TOL_HU.
SPEC_HU = {GGO: (-700.0, -300.0), CONSOLIDATION: (-100.0, 50.0), EFFUSION: (0.0, 30.0)}
TOL_HU = 40.0
SMALL = (16, 128, 128)


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom()


def test_types_shapes_and_spacing(phantom):
    assert phantom.ct.shape == phantom.lesions.shape == phantom.lungs.shape == (48, 256, 256)
    assert phantom.ct.dtype in (np.float32, np.int16)
    assert phantom.lesions.dtype == np.uint8 and phantom.lungs.dtype == np.uint8
    assert phantom.spacing == (5.0, 1.2, 1.2)
    assert set(np.unique(phantom.lesions)) == {0, GGO, CONSOLIDATION, EFFUSION}
    assert set(np.unique(phantom.lungs)) == {0, 1, 2}


@pytest.mark.parametrize("label", [GGO, CONSOLIDATION, EFFUSION])
def test_lesion_intensities_within_specified_ranges(phantom, label):
    lo, hi = SPEC_HU[label]
    values = phantom.ct[phantom.lesions == label]
    assert values.size > 50
    assert values.min() >= lo - TOL_HU and values.max() <= hi + TOL_HU
    assert lo <= np.median(values) <= hi  # the bulk lies inside the range itself


def test_background_tissues(phantom):
    ct, lungs, lesions = phantom.ct, phantom.lungs, phantom.lesions
    healthy_lung = ct[(lungs > 0) & (lesions == 0)]
    assert abs(np.median(healthy_lung) - HU_LUNG) < 15.0
    assert np.all(ct[:, 0, :] == -1000.0) and np.all(ct[:, :, 0] == -1000.0)  # air around the body
    assert ct.max() > 600.0  # bone (ribs, spine)
    assert ct.min() >= -1024.0


def test_lesions_only_inside_lungs_and_not_at_apex(phantom):
    assert np.all(phantom.lungs[phantom.lesions > 0] > 0)
    lung_z = np.flatnonzero(phantom.lungs.any(axis=(1, 2)))
    lesion_z = np.flatnonzero(phantom.lesions.any(axis=(1, 2)))
    assert lesion_z.max() < lung_z.max() - 3  # several lesion-free slices towards the apex


def test_labels_match_painted_intensities(phantom):
    ct, lungs, lesions = phantom.ct, phantom.lungs, phantom.lesions
    # Unlabelled lung voxels are parenchyma (-850 +- noise), vessels and bronchial walls (+40 +- noise)
    # or airway lumen (-1000), so none of them has a ground-glass value: GGO is exactly where it is labelled.
    ggo_like = (ct > -650.0) & (ct < -350.0)
    assert np.count_nonzero(ggo_like & (lungs > 0) & (lesions == 0)) == 0
    # Every voxel with a lung-parenchyma value belongs to the lung mask (nothing lung-like outside it).
    lung_like = (ct > -900.0) & (ct < -800.0)
    assert np.count_nonzero(lung_like) > 100_000
    assert np.all(lungs[lung_like] > 0)


def test_right_lung_on_image_left_and_effusion_posterior(phantom):
    zz, yy, xx = np.nonzero(phantom.lungs)
    labels = phantom.lungs[zz, yy, xx]
    assert xx[labels == 1].mean() < phantom.ct.shape[2] / 2 < xx[labels == 2].mean()
    eff_y = np.nonzero(phantom.lesions == EFFUSION)[1]
    assert eff_y.mean() > yy.mean() + 10
    # effusion lies in the lower (inferior) half of the lungs
    eff_z = np.nonzero(phantom.lesions == EFFUSION)[0]
    assert eff_z.mean() < zz.mean()


def test_spine_posterior_midline(phantom):
    z = phantom.ct.shape[0] // 2
    bone_y, bone_x = np.nonzero(phantom.ct[z] > 300.0)
    midline = np.abs(bone_x - phantom.ct.shape[2] / 2) < 10
    assert bone_y[midline].mean() > phantom.ct.shape[1] / 2  # bone in the midline is posterior


def test_deterministic_per_seed_and_different_across_seeds():
    a, b, c = make_phantom(3, SMALL), make_phantom(3, SMALL), make_phantom(4, SMALL)
    np.testing.assert_array_equal(a.ct, b.ct)
    np.testing.assert_array_equal(a.lesions, b.lesions)
    np.testing.assert_array_equal(a.lungs, b.lungs)
    assert not np.array_equal(a.lesions, c.lesions)
    assert not np.array_equal(a.ct, c.ct)


@pytest.mark.parametrize("shape", [(1, 256, 256), (16, 128, 128), (8, 97, 131), (8, 96, 96)])
def test_other_shapes(shape):
    p = make_phantom(0, shape)
    assert p.ct.shape == p.lesions.shape == p.lungs.shape == shape
    assert np.all(p.lungs[p.lesions > 0] > 0)
    assert (p.lungs == 1).any() and (p.lungs == 2).any()
    if min(s >= m for s, m in zip(shape, (8, 96, 96), strict=True)):
        assert set(np.unique(p.lesions)) == {0, GGO, CONSOLIDATION, EFFUSION}


@pytest.mark.parametrize("seed", range(5))
def test_every_class_present_for_default_shape(seed):
    counts = np.bincount(make_phantom(seed).lesions.ravel(), minlength=4)
    assert np.all(counts[1:] > 0)


def test_phantom_volume_round_trips_through_load_ct(tmp_path):
    from napari_covidseg.io import load_ct

    ph = make_phantom(2, (6, 64, 72))
    vol = ph.volume()
    assert vol.shape == ph.ct.shape and vol.spacing == ph.spacing and vol.intensity == "HU"
    paths = write_sample(tmp_path, seed=2, shape=(6, 64, 72))
    np.testing.assert_array_equal(load_ct(paths["lesions"]).array, ph.lesions)
    np.testing.assert_allclose(load_ct(paths["ct"]).array, np.rint(ph.ct))


def test_write_sample_nifti(tmp_path):
    nib = pytest.importorskip("nibabel")
    shape = (8, 96, 112)
    paths = write_sample(tmp_path / "out", seed=1, shape=shape, spacing=(4.0, 1.0, 0.8))
    assert set(paths) == {"ct", "lesions", "lungs"}
    assert paths["ct"].name == "covidseg_phantom_ct.nii.gz"
    assert paths["lesions"].name == "covidseg_phantom_lesions.nii.gz"
    assert paths["lungs"].name == "covidseg_phantom_lungs.nii.gz"
    phantom = make_phantom(1, shape, (4.0, 1.0, 0.8))
    expected = {"ct": np.int16, "lesions": np.uint8, "lungs": np.uint8}
    for name, path in paths.items():
        img = nib.load(str(path))
        assert img.shape == (112, 96, 8)
        assert img.get_data_dtype() == expected[name]
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
        np.testing.assert_allclose(img.header.get_zooms(), (0.8, 1.0, 4.0))
        assert img.header.get_xyzt_units()[0] == "mm"
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    lesions = np.asanyarray(nib.load(str(paths["lesions"])).dataobj)
    np.testing.assert_array_equal(lesions.transpose(2, 1, 0), phantom.lesions)
    ct = np.asanyarray(nib.load(str(paths["ct"])).dataobj)
    np.testing.assert_array_equal(ct.transpose(2, 1, 0), np.rint(phantom.ct).astype(np.int16))
