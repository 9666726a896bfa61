"""Inference on real (small) networks: shapes, geometry, progress, cancellation, batching, and a trained check."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_covidseg.errors import InputError
from napari_covidseg.inference import (
    Cancelled,
    classify_volume,
    iter_segment,
    resolve_device,
    segment_volume,
)
from napari_covidseg.inference.preprocess import CHUNK, prepare_slices
from napari_covidseg.io import CTVolume, load_ct
from napari_covidseg.models.checkpoint import LoadedModel
from napari_covidseg.sample import make_phantom
from napari_covidseg.training import train_segmentation
from tests.helpers import build_for, classification_card, segmentation_card


def phantom_volume(seed: int = 0, shape=(6, 96, 96)) -> tuple[CTVolume, np.ndarray]:
    ph = make_phantom(seed, shape)
    return ph.volume(f"phantom{seed}"), ph.lesions


@pytest.fixture(scope="module")
def tiny_unet() -> LoadedModel:
    torch.manual_seed(0)
    card = segmentation_card(size=64)
    return LoadedModel(build_for(card), card, "random")


def test_segment_shapes_progress_and_probabilities(tiny_unet):
    vol, _ = phantom_volume(shape=(7, 96, 80))
    updates = []
    seg = segment_volume(
        vol, tiny_unet, device="cpu", batch_size=3, return_probabilities=True, progress=updates.append, framing="whole"
    )
    assert seg.labels.shape == vol.shape and seg.labels.dtype == np.uint8
    assert set(np.unique(seg.labels)) <= {0, 1, 2, 3}
    assert [u.done for u in updates] == [0, 0, 3, 6, 7] and all(u.total == 7 for u in updates)
    assert seg.probabilities.shape == (7, 4, 96, 80)
    np.testing.assert_allclose(seg.probabilities.astype(np.float32).sum(axis=1), 1.0, atol=1e-2)
    top2 = np.sort(seg.probabilities.astype(np.float32), axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-2  # float16 storage may tie near-equal classes
    np.testing.assert_array_equal(seg.probabilities.argmax(axis=1)[clear], seg.labels[clear])


def test_batches_bound_what_the_network_sees(tiny_unet):
    vol, _ = phantom_volume(shape=(10, 96, 96))
    seen = []
    hook = tiny_unet.module.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    try:
        segment_volume(vol, tiny_unet, device="cpu", batch_size=4, framing="whole")
    finally:
        hook.remove()
    assert [s[0] for s in seen] == [4, 4, 2]
    assert all(s[1:] == (1, 64, 64) for s in seen)  # resized to the card's input size


def test_cancel_after_first_batch_returns_nothing(tiny_unet):
    vol, _ = phantom_volume(shape=(9, 96, 96))
    calls = []
    with pytest.raises(Cancelled):
        segment_volume(
            vol,
            tiny_unet,
            device="cpu",
            batch_size=2,
            progress=calls.append,
            should_stop=lambda: len(calls) >= 3,
            framing="whole",
        )
    assert [c.done for c in calls] == [0, 0, 2]  # start, lungs found (for the inside/outside figures), first batch
    gen = iter_segment(vol, tiny_unet, device="cpu", batch_size=2)
    next(gen)
    gen.close()  # a thread worker quitting closes the generator: no error, no result


def test_result_independent_of_on_disk_orientation(tiny_unet, tmp_path):
    """The same scan stored RAS or LPS segments to the same display labels, and saves back onto each file."""
    vol, _ = phantom_volume(shape=(5, 64, 72))
    disk = vol.array.transpose(2, 1, 0)  # (x, y, z) with affine diag(-sx, -sy, sz): LPS-like
    ras = nib.Nifti1Image(disk[::-1, ::-1, :].copy(), np.diag([1.2, 1.2, 5.0, 1]) @ np.eye(4))
    lps = nib.Nifti1Image(np.ascontiguousarray(disk), np.diag([-1.2, -1.2, 5.0, 1]))
    nib.save(ras, tmp_path / "ras.nii.gz")
    nib.save(lps, tmp_path / "lps.nii.gz")
    a, b = load_ct(tmp_path / "ras.nii.gz"), load_ct(tmp_path / "lps.nii.gz")
    np.testing.assert_array_equal(a.array, b.array)
    la = segment_volume(a, tiny_unet, device="cpu").labels
    lb = segment_volume(b, tiny_unet, device="cpu").labels
    np.testing.assert_array_equal(la, lb)


def test_trained_unet_finds_phantom_lesions_on_unseen_phantom():
    """A tiny U-Net trained briefly on two phantoms segments a third (other seed) far better than chance."""
    torch.manual_seed(0)
    card = segmentation_card(size=64, base_width=8)
    model = build_for(card)
    xs, ys = [], []
    for seed in (1, 2):
        vol, lesions = phantom_volume(seed, shape=(16, 128, 128))
        x, y = prepare_slices(vol, card, lesions)
        xs.append(x)
        ys.append(y)
    history = train_segmentation(model, torch.cat(xs), torch.cat(ys), steps=80, batch_size=8, lr=3e-3, device="cpu")
    assert np.mean(history.losses[-10:]) < np.mean(history.losses[:10])
    test_vol, truth = phantom_volume(7, shape=(16, 128, 128))
    pred = segment_volume(test_vol, LoadedModel(model, card), device="cpu").labels
    infected_pred, infected_true = pred > 0, truth > 0
    dice = 2 * (infected_pred & infected_true).sum() / (infected_pred.sum() + infected_true.sum())
    print(f"held-out phantom lesion Dice after 80 steps: {dice:.3f}")
    assert dice > 0.5


def test_classify_probabilities_and_cam_on_ct_grid():
    torch.manual_seed(0)
    card = classification_card(size=(16, 64, 64))
    vol, _ = phantom_volume(shape=(20, 96, 88))
    updates = []
    result = classify_volume(vol, LoadedModel(build_for(card), card), device="cpu", progress=updates.append)
    assert list(result.probabilities) == ["COVID-19", "common pneumonia", "normal"]
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert result.cam.shape == vol.shape and result.cam.dtype == np.float32
    assert 0.0 <= result.cam.min() and result.cam.max() <= 1.0 and result.cam.max() > 0
    assert result.cam_class == result.predicted
    assert updates[-1].done == updates[-1].total
    other = classify_volume(vol, LoadedModel(build_for(card), card), device="cpu", cam_class="normal")
    assert other.cam_class == "normal"
    with pytest.raises(InputError, match="no class 'pneumonia'"):
        classify_volume(vol, LoadedModel(build_for(card), card), device="cpu", cam_class="pneumonia")


def test_classify_yields_after_every_chunk_of_slices():
    """A long volume reports progress (and can be cancelled) while it is resampled, chunk by chunk."""
    card = classification_card(size=(8, 32, 32))
    vol, _ = phantom_volume(shape=(3 * CHUNK + 5, 48, 48))
    updates = []
    classify_volume(vol, LoadedModel(build_for(card), card), device="cpu", progress=updates.append)
    preparing = [u.done for u in updates if u.stage == "preparing"]
    assert preparing == [0, 1, 2, 3, 4]  # the start, then each of the 4 chunks
    done = [u.done for u in updates]
    assert done == sorted(done) and updates[-1].done == updates[-1].total


def test_classify_cancel():
    card = classification_card(size=(16, 64, 64))
    vol, _ = phantom_volume(shape=(20, 96, 88))
    with pytest.raises(Cancelled):
        classify_volume(vol, LoadedModel(build_for(card), card), device="cpu", should_stop=lambda: True)


def test_task_mismatch_and_devices(tiny_unet):
    vol, _ = phantom_volume()
    with pytest.raises(InputError, match="segmentation model"):
        classify_volume(vol, tiny_unet)
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA"):
            resolve_device("cuda")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")


def test_class_argmax_matches_torch_argmax_including_ties():
    """The fast uint8 argmax of segment.py gives exactly torch's result (first class wins ties)."""
    from napari_covidseg.inference.segment import class_argmax

    torch.manual_seed(0)
    p = torch.softmax(torch.randn(3, 4, 37, 53), dim=1)[..., 2:35, 1:50]  # a strided crop, as unfit returns
    p[0, :, :4, :4] = 0.25  # exact ties
    p[1, 1:3, 5, 5] = 0.5
    np.testing.assert_array_equal(class_argmax(p), p.argmax(dim=1).numpy().astype(np.uint8))


def test_segmenting_more_than_memory_allows_is_refused_up_front(tiny_unet, monkeypatch):
    from napari_covidseg.io.volume import display_volume

    monkeypatch.setenv("COVIDSEG_MEMORY_LIMIT_MB", "50")
    vol = display_volume(np.full((200, 256, 256), -1000.0, np.float32), (1.0, 1.0, 1.0), "big", "HU")
    with pytest.raises(InputError, match="needs about .* of memory"):
        segment_volume(vol, tiny_unet, device="cpu")


def test_fast_path_matches_the_plain_path_on_the_bundled_unet():
    """Speed work keeps accuracy: channels-last weights and input and the uint8 argmax give the labels of a plain
    NCHW forward + torch argmax, on the bundled model and a phantom."""
    from napari_covidseg.inference.preprocess import body_box, fit, normalise, unfit
    from napari_covidseg.models.checkpoint import resolve_model

    vol, _ = phantom_volume(seed=3, shape=(12, 128, 128))
    fast = segment_volume(vol, "unet", device="cpu", batch_size=4, framing="whole").labels
    plain_model = resolve_model("unet")
    net, card = plain_model.module.eval(), plain_model.card
    ys, xs = body_box(vol.array, vol.intensity)
    batch, geom = fit(torch.from_numpy(normalise(vol.array[:, ys, xs], vol.intensity, card))[:, None], card.input_size)
    with torch.inference_mode():
        probs = unfit(torch.softmax(net(batch).float(), dim=1), geom)
    plain = np.zeros(vol.shape, dtype=np.uint8)
    plain[:, ys, xs] = probs.argmax(dim=1).numpy()
    assert (fast == plain).mean() > 0.9999  # float rounding may flip a tie-close pixel, nothing more
    assert fast.any()


def test_volumes_ml_counts_every_class_by_its_id():
    from napari_covidseg.inference.segment import Segmentation

    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([0, 1, 2, 3], np.uint8), size=(5, 40, 30), p=[0.7, 0.15, 0.1, 0.05])
    seg = Segmentation(labels, segmentation_card(num_classes=4))
    spacing = (2.5, 0.7, 0.8)
    counts = np.bincount(labels.ravel(), minlength=4)
    expected = {c["name"]: counts[c["id"]] * 2.5 * 0.7 * 0.8 / 1000.0 for c in seg.card.classes if c["id"]}
    assert seg.volumes_ml(spacing) == pytest.approx(expected)
    assert len(expected) == 3


def test_cam_is_smooth_and_kept_inside_the_lungs():
    """A HU scan's CAM is zero outside the lung region and says how much of it lay there; display images and scans
    without lungs keep it over the body and say why."""
    from scipy import ndimage

    from napari_covidseg.inference.lungfirst import find_lungs

    torch.manual_seed(0)
    card = classification_card(size=(16, 64, 64))
    vol = make_phantom(seed=3, shape=(20, 96, 96), spacing=(5.0, 3.0, 3.0)).volume("phantom")
    result = classify_volume(vol, LoadedModel(build_for(card), card), device="cpu")
    region = find_lungs(vol).lungs > 0
    assert result.cam_region == "lungs" and region.any()
    assert not result.cam[~region].any() and result.cam[region].max() > 0
    assert 0.0 < result.cam_inside <= 1.0 and not result.notes
    # smooth: away from the lungs' edge (where the map fades out) no in-plane step between neighbouring voxels is as
    # large as a jump between the coarse feature cells would be
    z = int(np.argmax(region.sum(axis=(1, 2))))
    deep = ndimage.binary_erosion(region[z], iterations=3)
    inside = deep[:, 1:] & deep[:, :-1]
    assert np.abs(np.diff(result.cam[z], axis=1))[inside].max() < 0.25
    display = CTVolume(np.clip((vol.array + 1000) / 8, 0, 255).astype(np.float32), vol.spacing, vol.affine, "display")
    shown = classify_volume(display, LoadedModel(build_for(card), card), device="cpu")
    assert shown.cam_region == "body" and shown.cam_inside == 1.0 and "Hounsfield" in shown.notes[0]
