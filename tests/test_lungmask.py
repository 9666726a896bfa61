"""Classical lung mask: agreement with the phantom's lungs, right/left convention, HU-only input, a real scan."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_covidseg.analysis.lungmask import LEFT_LUNG, RIGHT_LUNG, lung_mask
from napari_covidseg.errors import InputError
from napari_covidseg.sample import Phantom, make_phantom
from tests.conftest import shared


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def mean_x(mask: np.ndarray) -> float:
    """Mean column (x) index of the True voxels."""
    return float(np.nonzero(mask)[2].mean())


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom(seed=3, shape=(24, 128, 128))


@pytest.fixture(scope="module")
def phantom_mask(phantom) -> np.ndarray:
    return lung_mask(phantom.volume())


def test_mask_type_and_values(phantom, phantom_mask):
    assert phantom_mask.shape == phantom.ct.shape
    assert phantom_mask.dtype == np.uint8
    assert set(np.unique(phantom_mask)) == {0, RIGHT_LUNG, LEFT_LUNG}


@pytest.mark.parametrize("side", [RIGHT_LUNG, LEFT_LUNG])
def test_dice_against_phantom_lungs(phantom, phantom_mask, side):
    assert dice(phantom_mask == side, phantom.lungs == side) > 0.85


def test_right_lung_is_image_left(phantom, phantom_mask):
    midline = (phantom.ct.shape[2] - 1) / 2.0
    assert mean_x(phantom_mask == RIGHT_LUNG) < midline < mean_x(phantom_mask == LEFT_LUNG)
    # no voxel given to the wrong side of the phantom's truth
    assert not np.any((phantom_mask == RIGHT_LUNG) & (phantom.lungs == LEFT_LUNG))
    assert not np.any((phantom_mask == LEFT_LUNG) & (phantom.lungs == RIGHT_LUNG))


def test_bare_array_with_spacing_matches_volume(phantom, phantom_mask):
    np.testing.assert_array_equal(lung_mask(phantom.ct, spacing=phantom.spacing), phantom_mask)


def test_non_hu_input_is_refused(phantom):
    display = dataclasses.replace(phantom.volume(), intensity="display")
    with pytest.raises(InputError, match="HU volume"):
        lung_mask(display)
    windowed = np.clip((phantom.ct + 1350.0) / 1500.0 * 255.0, 0, 255).astype(np.uint8)
    with pytest.raises(InputError, match="HU volume"):
        lung_mask(windowed, spacing=phantom.spacing)
    with pytest.raises(InputError):
        lung_mask(np.zeros((4, 4, 4, 4), dtype=np.float32) - 1000.0)


def test_real_volume_both_lungs_plausible_volume():
    from napari_covidseg.io import load_ct

    volume = load_ct(shared("covid_ct_md_sample/volumes_256/Normal_normal001.nii.gz"))
    mask = lung_mask(volume)
    litres = {side: float((mask == side).sum()) * volume.voxel_volume_ml / 1000.0 for side in (RIGHT_LUNG, LEFT_LUNG)}
    assert all(v > 0.5 for v in litres.values()), litres
    assert 2.0 <= sum(litres.values()) <= 8.0, litres
    assert mean_x(mask == RIGHT_LUNG) < mean_x(mask == LEFT_LUNG)
