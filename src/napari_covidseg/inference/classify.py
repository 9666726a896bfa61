"""Whole-volume diagnosis (COVID-19 / common pneumonia / normal) with a class-activation map on the CT grid.

The volume is windowed, cropped to the body, resized to the card's (D, H, W) input in slice chunks (memory stays
bounded), classified by the 3D network, and the CAM of the predicted class (Zhou et al. 2016: the classifier's
weights applied to the last feature maps) is resized back onto every voxel of the original CT: linearly along z and
bicubically in-plane (smooth, no blocks), and, for HU scans, kept only inside the lung mask of lung-first
segmentation (fading out over a few mm at its edge), so the map reads as "where in the lungs the class's evidence
lies". How much of the map fell outside that region is reported, not hidden (``Classification.cam_inside``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from napari_covidseg.errors import InputError
from napari_covidseg.inference.device import autocast, resolve_device
from napari_covidseg.inference.lungfirst import find_lungs
from napari_covidseg.inference.preprocess import CHUNK, body_box, normalise
from napari_covidseg.inference.segment import ModelRef, Progress, run_generator
from napari_covidseg.io.volume import CTVolume
from napari_covidseg.models.card import ModelCard
from napari_covidseg.models.checkpoint import resolve_model

CAM_EDGE_MM = 3.0  # the map fades out over about this width at the lung region's edge (Gaussian sigma, in-plane)


@dataclass
class Classification:
    """Result of :func:`classify_volume`.

    Attributes:
        probabilities: class name -> probability (sums to 1), in the card's class order.
        cam: float32 (z, y, x) on the CT grid, in [0, 1]: where the predicted class drew its evidence.
        cam_class: the class the CAM explains (the predicted one unless asked otherwise).
        cam_region: where ``cam`` is kept: ``"lungs"`` (the lung mask of a HU scan) or ``"body"`` (the body's
            bounding box: display images, or no lungs found).
        cam_inside: share (0-1) of the map's total weight that lies inside ``cam_region`` before the rest was set
            to 0 (1.0 for ``"body"``).
        notes: plain sentences about the map (e.g. no lungs found).
    """

    probabilities: dict[str, float]
    cam: np.ndarray
    cam_class: str
    card: ModelCard
    device: str = "cpu"
    seconds: float = 0.0
    cam_region: str = "body"
    cam_inside: float = 1.0
    notes: list[str] = field(default_factory=list)

    @property
    def predicted(self) -> str:
        return max(self.probabilities, key=self.probabilities.get)


def _resample_to_input(volume: CTVolume, card: ModelCard, ys: slice, xs: slice) -> torch.Tensor:
    """(1, 1, D, H, W) network input of ``volume`` cropped to (ys, xs) (see :func:`_iter_resample`)."""
    return run_generator(_iter_resample(volume, card, ys, xs))


def _iter_resample(volume: CTVolume, card: ModelCard, ys: slice, xs: slice) -> Generator[int, None, torch.Tensor]:
    """In-plane resize chunk by chunk (yielding the chunks done), then along z; returns (1, 1, D, H, W)."""
    d, h, w = card.input_size
    planes = []
    for z0 in range(0, volume.shape[0], CHUNK):
        chunk = torch.from_numpy(normalise(volume.array[z0 : z0 + CHUNK, ys, xs], volume.intensity, card))
        planes.append(
            F.interpolate(chunk[:, None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[:, 0]
        )
        yield len(planes)
    stack = torch.cat(planes)  # (Z, H, W), small
    stack = F.interpolate(stack.permute(1, 2, 0).reshape(1, h * w, -1), size=d, mode="linear", align_corners=False)
    return stack.reshape(h, w, d).permute(2, 0, 1)[None, None].contiguous()


def iter_classify(
    volume: CTVolume,
    model: ModelRef,
    *,
    device: str | torch.device = "auto",
    cam_class: str | None = None,
) -> Generator[Progress, None, Classification]:
    """Classify ``volume``; yields :class:`Progress` (stages: preparing, classifying, mapping CAM)."""
    loaded = resolve_model(model, task="classification")
    card, dev = loaded.card, resolve_device(device)
    if cam_class is not None and cam_class not in card.class_names:
        raise InputError(f"no class {cam_class!r} in {card.name!r} (classes: {', '.join(card.class_names)})")
    net = loaded.module.to(dev).eval()
    start = time.perf_counter()
    z, h, w = volume.shape
    n_chunks = -(-z // CHUNK)
    total = 2 * n_chunks + 2
    yield Progress(0, total, "preparing")
    ys, xs = body_box(volume.array, volume.intensity)
    resample = _iter_resample(volume, card, ys, xs)
    while True:  # one progress update per chunk of slices
        try:
            done = next(resample)
        except StopIteration as finished:
            x = finished.value.to(dev)
            break
        yield Progress(done, total, "preparing")
    yield Progress(n_chunks, total, "classifying")
    with torch.inference_mode(), autocast(dev):
        features = net.forward_features(x)
        logits = net.fc(features.float().mean(dim=(2, 3, 4)))
        probs = torch.softmax(logits.float(), dim=1)[0].cpu().numpy()
        names = card.class_names
        target = names.index(cam_class) if cam_class is not None else int(np.argmax(probs))
        cam_small = torch.einsum("c,bcdhw->bdhw", net.fc.weight[target].float(), features.float()).relu()
        cam_small = (cam_small / cam_small.max().clamp_min(1e-8))[:, None].cpu()  # (1, 1, d', h', w') in 0..1
    yield Progress(n_chunks + 1, total, "finding the lungs")
    region, notes = _cam_region(volume)
    yield Progress(n_chunks + 2, total, "mapping CAM")
    crop_h, crop_w = ys.stop - ys.start, xs.stop - xs.start
    along_z = F.interpolate(cam_small, size=(z, *cam_small.shape[-2:]), mode="trilinear", align_corners=False)[0, 0]
    cam = np.zeros((z, h, w), dtype=np.float32)
    weight_all = weight_inside = 0.0
    for i, z0 in enumerate(range(0, z, CHUNK)):
        chunk = F.interpolate(
            along_z[z0 : z0 + CHUNK, None], size=(crop_h, crop_w), mode="bicubic", align_corners=False
        )
        part = chunk[:, 0].clamp(0, 1).numpy()
        weight_all += float(part.sum(dtype=np.float64))
        if region is not None:
            part = part * _soft_inside(region[z0 : z0 + CHUNK, ys, xs], volume.spacing)
            weight_inside += float(part.sum(dtype=np.float64))
        cam[z0 : z0 + CHUNK, ys, xs] = part
        if i + 1 < n_chunks:
            yield Progress(n_chunks + 2 + i, total, "mapping CAM")
    inside = weight_inside / weight_all if region is not None and weight_all > 0 else 1.0
    yield Progress(total, total, "mapping CAM")
    return Classification(
        {n: float(p) for n, p in zip(names, probs)},
        cam,
        names[target],
        card,
        str(dev),
        time.perf_counter() - start,
        cam_region="lungs" if region is not None else "body",
        cam_inside=inside,
        notes=notes,
    )


def _soft_inside(region: np.ndarray, spacing) -> np.ndarray:
    """0..1 weights that fade from 1 inside ``region`` (bool (z, y, x)) to 0 at its edge over about
    ``CAM_EDGE_MM`` in-plane, and are 0 outside: the map ends smoothly, not on the region's voxel steps."""
    sigma = (0.0, CAM_EDGE_MM / spacing[1], CAM_EDGE_MM / spacing[2])
    blurred = ndimage.gaussian_filter(region.astype(np.float32), sigma=sigma, mode="nearest")
    return np.clip(2.0 * blurred - 1.0, 0.0, 1.0) * region


def _cam_region(volume: CTVolume) -> tuple[np.ndarray | None, list[str]]:
    """The lungs the CAM is kept in (bool (z, y, x)), or None (and why) for display images / no lungs."""
    if volume.intensity != "HU":
        return None, ["the map covers the body: lungs are found only in CT in Hounsfield units"]
    lungs = find_lungs(volume)
    if lungs.slices_with_lung == 0:
        return None, ["the map covers the body: no lungs were found in this scan"]
    return lungs.lungs > 0, []


def classify_volume(
    volume: CTVolume,
    model: ModelRef,
    *,
    device: str | torch.device = "auto",
    cam_class: str | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Classification:
    """Run :func:`iter_classify` to the end with optional progress and cancellation callbacks."""
    return run_generator(iter_classify(volume, model, device=device, cam_class=cam_class), progress, should_stop)
