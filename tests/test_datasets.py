"""Training data: MedSeg layout, NIfTI pairs, corrections folder, folds, and the augmentation that feeds the loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from napari_covidseg.errors import InputError
from napari_covidseg.sample import make_phantom
from napari_covidseg.training.augment import NONE, Augment, augment_batch
from napari_covidseg.training.datasets import (
    MEDSEG_ROT90_K,
    concat,
    contiguous_folds,
    load_corrections,
    load_dataset,
    load_medseg,
    medseg_pairs,
)
from tests.conftest import shared
from tests.helpers import segmentation_card


def write_medseg(root, n=4, shape=(40, 56)):
    """A MedSeg-layout folder: 8-bit JPG slices + palette PNG masks {0, 1, 2}, names 0..n-1."""
    imgs = root / "TrainingSet" / "MultiClassInfection-Train" / "Imgs"
    gts = imgs.parent / "GT"
    imgs.mkdir(parents=True)
    gts.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        mask = np.zeros(shape, np.uint8)
        mask[5 + i : 15 + i, 10:30] = 1
        mask[25:30, 40 - i : 50] = 2
        image = np.clip(40 + 150 * (mask > 0) + rng.normal(0, 5, shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(imgs / f"{i}.jpg", quality=95)
        png = Image.fromarray(mask, mode="P")
        png.putpalette([0, 0, 0, 255, 255, 0, 255, 0, 0] + [0] * (256 * 3 - 9))
        png.save(gts / f"{i}.png")
    return root


def write_pairs(folder, seeds=(1, 2)):
    """images/ + masks/ with phantom NIfTI volumes (HU) and their lesion masks, same stems."""
    from napari_covidseg.io.writers import save_array, save_labels

    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for seed in seeds:
        ph = make_phantom(seed=seed, shape=(6, 64, 64))
        vol = ph.volume(f"scan{seed}")
        save_array(vol.array.astype(np.int16), vol, folder / "images" / f"scan{seed}.nii.gz")
        save_labels(ph.lesions, vol, folder / "masks" / f"scan{seed}.nii.gz")
    return folder


def test_medseg_layout_is_found_at_any_level_and_turned_to_display(tmp_path):
    root = write_medseg(tmp_path / "medseg")
    card = segmentation_card(size=32)
    for level in (root, root / "TrainingSet", root / "TrainingSet" / "MultiClassInfection-Train"):
        assert [p[0].name for p in medseg_pairs(level)] == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]
    data = load_dataset(root, card)
    assert data.images.shape == (4, 1, 32, 32) and data.labels.shape == (4, 32, 32)
    assert data.names == ["0", "1", "2", "3"] and set(data.labels.unique().tolist()) == {0, 1, 2}
    # rotated a quarter turn clockwise: the (40, 56) slice is padded to 56 x 56 with its long side vertical
    card_native = segmentation_card(size=56)
    one = load_medseg(root, card_native, medseg_pairs(root)[:1])
    mask = np.asarray(Image.open(root / "TrainingSet/MultiClassInfection-Train/GT/0.png"))
    expected = np.rot90(mask, MEDSEG_ROT90_K)  # (56, 40), padded left/right by 8
    assert np.array_equal(one.labels[0, :, 8:48].numpy(), expected)


def test_nifti_pairs_and_corrections(tmp_path):
    card = segmentation_card(size=32)
    pairs = load_dataset(write_pairs(tmp_path / "pairs"), card)
    lesion = (pairs.labels > 0).flatten(1).any(1)
    assert lesion.sum() >= 1 and (~lesion).sum() <= lesion.sum()  # lesion slices + at most as many empty ones
    assert set(pairs.groups) == {"scan1.nii.gz", "scan2.nii.gz"} and pairs.names[0].startswith("scan1.nii.gz:z=")
    corrections = load_corrections(write_pairs(tmp_path / "corr", seeds=(3,)), card)
    assert len(corrections) == 6  # every corrected slice is kept
    both = concat([pairs, corrections])
    assert len(both) == len(pairs) + 6 and len(both.files) == 3


def test_bad_training_folders_say_what_is_wrong(tmp_path):
    card = segmentation_card(size=32)
    with pytest.raises(InputError, match="not a folder"):
        load_dataset(tmp_path / "missing", card)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="Imgs/ \\+ GT/"):
        load_dataset(tmp_path / "empty", card)
    root = write_medseg(tmp_path / "m", n=1)
    (root / "TrainingSet/MultiClassInfection-Train/GT/0.png").unlink()
    with pytest.raises(InputError, match="no image in Imgs/ has a mask"):
        load_dataset(root, card)


def test_contiguous_folds():
    assert contiguous_folds(10, 5) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert sorted(set(contiguous_folds(50, 5))) == [0, 1, 2, 3, 4]
    assert [contiguous_folds(12, 5).count(f) for f in range(5)] == [3, 2, 3, 2, 2]
    with pytest.raises(InputError):
        contiguous_folds(3, 5)


def test_augmentation_keeps_image_and_mask_aligned():
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(16, 1, 48, 48)
    x[:, :, 10:30, 14:40] = 0.8
    y = (x[:, 0] > 0.5).long() * 2
    xa, ya = augment_batch(x, y, gen, Augment(crop=32, contrast=0, brightness=0, gamma=0))
    assert xa.shape == (16, 1, 32, 32) and ya.shape == (16, 32, 32) and ya.dtype == torch.long
    assert set(ya.unique().tolist()) <= {0, 2}  # nearest sampling: no invented classes
    bright = xa[:, 0] > 0.5
    agree = (bright == (ya == 2)).float().mean()
    assert agree > 0.97  # only boundary pixels may differ (bilinear vs nearest)
    # zoom varies the lesion area across the batch (scale 0.5-1.5), rotation moves it
    areas = (ya == 2).flatten(1).sum(1).float()
    assert areas.max() > 1.5 * areas.min().clamp_min(1)
    same_x, same_y = augment_batch(x, y, torch.Generator().manual_seed(1), NONE)
    assert torch.equal(same_y, y) and torch.allclose(same_x, x, atol=1e-6)


def test_medseg_real_slices_load(tmp_path):
    root = shared("medseg_covid_semiseg_infnet")
    pairs = medseg_pairs(root)
    assert len(pairs) == 50
    data = load_medseg(root, segmentation_card(size=64), pairs[:3])
    assert data.images.shape == (3, 1, 64, 64) and 0.0 <= float(data.images.min()) < float(data.images.max()) <= 1
    assert set(data.labels.unique().tolist()) <= {0, 1, 2}
