"""Whole-volume diagnosis (COVID-19 / common pneumonia / normal) with a class-activation map on the CT grid.

The volume is windowed, cropped to the body, resized to the card's (D, H, W) input in slice chunks (memory stays
bounded), classified by the 3D network, and the CAM of the predicted class (Zhou et al. 2016: the classifier's
weights applied to the last feature maps) is resized back onto every voxel of the original CT.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from napari_covidseg.errors import InputError
from napari_covidseg.inference.device import autocast, resolve_device
from napari_covidseg.inference.preprocess import CHUNK, body_box, normalise
from napari_covidseg.inference.segment import ModelRef, Progress, run_generator
from napari_covidseg.io.volume import CTVolume
from napari_covidseg.models.card import ModelCard
from napari_covidseg.models.checkpoint import resolve_model


@dataclass
class Classification:
    """Result of :func:`classify_volume`.

    Attributes:
        probabilities: class name -> probability (sums to 1), in the card's class order.
        cam: float32 (z, y, x) on the CT grid, in [0, 1]: where the predicted class drew its evidence.
        cam_class: the class the CAM explains (the predicted one unless asked otherwise).
    """

    probabilities: dict[str, float]
    cam: np.ndarray
    cam_class: str
    card: ModelCard
    device: str = "cpu"
    seconds: float = 0.0

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
    total = 2 * n_chunks + 1
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
    yield Progress(n_chunks + 1, total, "mapping CAM")
    crop_h, crop_w = ys.stop - ys.start, xs.stop - xs.start
    along_z = F.interpolate(cam_small, size=(z, *cam_small.shape[-2:]), mode="trilinear", align_corners=False)[0, 0]
    cam = np.zeros((z, h, w), dtype=np.float32)
    for i, z0 in enumerate(range(0, z, CHUNK)):
        chunk = F.interpolate(
            along_z[z0 : z0 + CHUNK, None], size=(crop_h, crop_w), mode="bilinear", align_corners=False
        )[:, 0]
        cam[z0 : z0 + CHUNK, ys, xs] = chunk.clamp(0, 1).numpy()
        yield Progress(n_chunks + 2 + i, total, "mapping CAM")
    return Classification(
        {n: float(p) for n, p in zip(names, probs)}, cam, names[target], card, str(dev), time.perf_counter() - start
    )


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
