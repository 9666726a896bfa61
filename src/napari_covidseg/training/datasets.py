"""Training data: MedSeg PNG/JPG slices, NIfTI image/mask pairs and the corrections folder, prepared like inference.

Every source ends up as a :class:`SliceDataset`: slices windowed, cropped to the body, padded to a square and
resized to the model input (``inference.preprocess.prepare_array``), so training sees exactly what inference sees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from napari_covidseg.errors import InputError
from napari_covidseg.inference.preprocess import prepare_array
from napari_covidseg.io import is_supported, load_ct, source_stem
from napari_covidseg.io.labels import find_mask, load_labels
from napari_covidseg.models.card import ModelCard

MEDSEG_MULTICLASS = "MultiClassInfection-Train"
# The MedSeg slices (Inf-Net export) have the spine on the image's right; a clockwise quarter turn puts it at the
# bottom, the radiological display convention every other source is loaded in.
MEDSEG_ROT90_K = -1


@dataclass
class SliceDataset:
    """Prepared slices with their provenance.

    Attributes:
        images: (N, 1, H, W) float32 in [0, 1].
        labels: (N, H, W) int64 class ids.
        names: one entry per slice, e.g. ``"12"`` (a MedSeg slice) or ``"scan.nii.gz:z=30"``.
        groups: the source image of each slice; cross-validation keeps a group in one fold.
        description: where the data came from, for model cards.
    """

    images: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    groups: list[str]
    description: str
    files: list[tuple[Path, Path]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, index) -> SliceDataset:
        index = list(index)
        keep = {self.groups[i] for i in index}
        return SliceDataset(
            self.images[index],
            self.labels[index],
            [self.names[i] for i in index],
            [self.groups[i] for i in index],
            self.description,
            [f for f in self.files if source_stem(f[0]) in keep or f[0].name in keep],
        )

    def class_pixels(self) -> dict[int, int]:
        ids, counts = torch.unique(self.labels, return_counts=True)
        return {int(i): int(c) for i, c in zip(ids, counts, strict=True)}


def concat(datasets: list[SliceDataset]) -> SliceDataset:
    if not datasets:
        raise InputError("no training data given")
    if len(datasets) == 1:
        return datasets[0]
    return SliceDataset(
        torch.cat([d.images for d in datasets]),
        torch.cat([d.labels for d in datasets]),
        [n for d in datasets for n in d.names],
        [g for d in datasets for g in d.groups],
        " + ".join(d.description for d in datasets),
        [f for d in datasets for f in d.files],
    )


def _natural(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def medseg_folder(root: str | Path) -> Path | None:
    """The folder holding ``Imgs/`` and ``GT/`` for the MedSeg layout under ``root`` (multi-class preferred)."""
    root = Path(root)
    for candidate in (
        root,
        root / MEDSEG_MULTICLASS,
        root / "TrainingSet" / MEDSEG_MULTICLASS,
    ):
        if (candidate / "Imgs").is_dir() and (candidate / "GT").is_dir():
            return candidate
    return None


def medseg_pairs(root: str | Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of a MedSeg-layout folder, in natural order of the file names."""
    folder = medseg_folder(root)
    if folder is None:
        raise InputError(f"{root}: no Imgs/ and GT/ folders (MedSeg layout) found")
    pairs = []
    for img in sorted((p for p in (folder / "Imgs").iterdir() if is_supported(p)), key=_natural):
        mask = find_mask(folder / "GT", source_stem(img))
        if mask is not None:
            pairs.append((img, mask))
    if not pairs:
        raise InputError(f"{folder}: no image in Imgs/ has a mask with the same name in GT/")
    return pairs


def _prepare_pair(img: Path, mask: Path, card: ModelCard, rot90_k: int = 0):
    volume, labels = load_ct(img), load_labels(mask)
    if labels.shape != volume.shape:
        raise InputError(f"{mask}: mask shape {labels.shape} differs from image {volume.shape}")
    array = volume.array
    if rot90_k:
        array, labels = np.rot90(array, rot90_k, axes=(1, 2)), np.rot90(labels, rot90_k, axes=(1, 2))
    return prepare_array(
        np.ascontiguousarray(array), volume.intensity, card, np.ascontiguousarray(labels), spacing=volume.spacing
    )


def load_medseg(root: str | Path, card: ModelCard, pairs: list[tuple[Path, Path]] | None = None) -> SliceDataset:
    """The MedSeg slices (8-bit windowed JPG + palette PNG masks), turned to display orientation and prepared."""
    pairs = pairs if pairs is not None else medseg_pairs(root)
    xs, ys, names = [], [], []
    for img, mask in pairs:
        x, y = _prepare_pair(img, mask, card, MEDSEG_ROT90_K)
        xs.append(x)
        ys.append(y)
        names.append(source_stem(img))
    return SliceDataset(torch.cat(xs), torch.cat(ys), names, list(names), f"MedSeg slices ({len(names)})", pairs)


def load_pairs(
    images_dir: str | Path, masks_dir: str | Path, card: ModelCard, *, slices: str = "lesion+sample"
) -> SliceDataset:
    """Image/mask pairs with the same stem (NIfTI volumes, single-slice NIfTI, PNG...), every slice prepared.

    ``slices``: "all" keeps every slice (a corrections folder: every slice there was checked by a person);
    "lesion+sample" keeps the slices with any label plus as many lesion-free slices, evenly spaced.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise InputError(f"{folder}: not a folder")
    images = sorted((p for p in images_dir.iterdir() if is_supported(p)), key=_natural)
    pairs = [(img, find_mask(masks_dir, source_stem(img))) for img in images]
    pairs = [(img, mask) for img, mask in pairs if mask is not None]
    if not pairs:
        raise InputError(f"no image in {images_dir} has a mask with the same name in {masks_dir}")
    xs, ys, names, groups = [], [], [], []
    for img, mask in pairs:
        x, y = _prepare_pair(img, mask, card)
        keep = np.arange(len(y))
        if slices != "all":
            lesion = (y > 0).flatten(1).any(1).numpy()
            empty = np.flatnonzero(~lesion)
            n_empty = min(len(empty), max(int(lesion.sum()), 1))
            picked = empty[np.linspace(0, len(empty) - 1, n_empty).round().astype(int)] if len(empty) else empty
            keep = np.sort(np.concatenate([np.flatnonzero(lesion), picked]))
        xs.append(x[keep])
        ys.append(y[keep])
        names += [f"{img.name}:z={int(z)}" for z in keep]
        groups += [img.name] * len(keep)
    return SliceDataset(
        torch.cat(xs), torch.cat(ys), names, groups, f"{images_dir.name} image/mask pairs ({len(pairs)})", pairs
    )


def load_corrections(folder: str | Path, card: ModelCard) -> SliceDataset:
    """A corrections folder: ``images/<key>.nii.gz`` + ``masks/<key>.nii.gz``, every slice person-checked."""
    folder = Path(folder)
    return load_pairs(folder / "images", folder / "masks", card, slices="all")


def load_dataset(path: str | Path, card: ModelCard) -> SliceDataset:
    """Recognise the layout of ``path``: MedSeg (``Imgs/`` + ``GT/``) or ``images/`` + ``masks/`` pairs."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: not a folder")
    if medseg_folder(path) is not None:
        return load_medseg(path, card)
    if (path / "images").is_dir() and (path / "masks").is_dir():
        return load_pairs(path / "images", path / "masks", card)
    raise InputError(f"{path}: expected Imgs/ + GT/ (MedSeg layout) or images/ + masks/ folders")


def contiguous_folds(n: int, k: int) -> list[int]:
    """Fold of each of ``n`` items in their given order: ``k`` contiguous blocks of (nearly) equal size.

    Neighbouring MedSeg slice numbers tend to come from the same patient; contiguous blocks keep them together,
    which is the cautious choice when patient ids are unknown.
    """
    if not 2 <= k <= n:
        raise InputError(f"need 2 <= folds <= {n} items, got {k}")
    return [min(i * k // n, k - 1) for i in range(n)]


SOFT_LESION_MAX = 255  # soft targets are stored as 0..255 (probability x 255), like Inf-Net's pseudo-label PNGs


def load_soft_lesions(root: str | Path, card: ModelCard, *, limit: int | None = None) -> SliceDataset:
    """Extra slices with soft "lesion vs not" targets (pseudo-labels, no class split).

    ``root`` holds ``Imgs/`` + ``GT/`` (Inf-Net's layout, e.g. ../shared/data/infnet_pseudo1600: lung-cropped 8-bit
    slices rotated like MedSeg, soft 0..255 PNG maps) or ``images/`` + ``masks/`` in display orientation. Masks are
    read as grey levels 0..255 (a hard 0/1 mask is taken as 0/255). ``labels`` of the result hold the soft target
    x 255 (int64 0..255, so the same geometric augmentation applies); lesion probability = label / 255.
    """
    from PIL import Image

    root = Path(root)
    if (root / "Imgs").is_dir() and (root / "GT").is_dir():
        images_dir, masks_dir, rot = root / "Imgs", root / "GT", MEDSEG_ROT90_K
    elif (root / "images").is_dir() and (root / "masks").is_dir():
        images_dir, masks_dir, rot = root / "images", root / "masks", 0
    else:
        raise InputError(f"{root}: expected Imgs/ + GT/ (Inf-Net layout) or images/ + masks/ with soft lesion masks")
    images = sorted((p for p in images_dir.iterdir() if is_supported(p)), key=_natural)
    pairs = [(img, find_mask(masks_dir, source_stem(img))) for img in images]
    pairs = [(img, mask) for img, mask in pairs if mask is not None][:limit]
    if not pairs:
        raise InputError(f"no image in {images_dir} has a mask with the same name in {masks_dir}")
    xs, ys, names = [], [], []
    for img, mask in pairs:
        volume = load_ct(img)
        if mask.suffix.lower() in (".png", ".jpg", ".jpeg"):
            with Image.open(mask) as im:
                soft = np.asarray(im.convert("L"), dtype=np.int64)[None]
        else:
            soft = load_labels(mask).astype(np.int64)
        if soft.max(initial=0) <= 1:
            soft = soft * SOFT_LESION_MAX
        if soft.shape != volume.shape:
            raise InputError(f"{mask}: mask shape {soft.shape} differs from image {volume.shape}")
        array = volume.array
        if rot:
            array, soft = np.rot90(array, rot, axes=(1, 2)), np.rot90(soft, rot, axes=(1, 2))
        x, y = prepare_array(
            np.ascontiguousarray(array), volume.intensity, card, np.ascontiguousarray(soft), spacing=volume.spacing
        )
        xs.append(x)
        ys.append(y)
        names.append(source_stem(img))
    return SliceDataset(
        torch.cat(xs), torch.cat(ys), names, list(names), f"{root.name}: soft lesion targets ({len(names)})", pairs
    )


def relabel_with_teacher(
    extra: SliceDataset, teacher, *, device: str = "auto", batch_size: int = 32, name: str | None = None
) -> SliceDataset:
    """Self-training targets: ``extra``'s slices with soft lesion targets predicted by ``teacher``.

    ``teacher`` is a 2D segmentation :class:`~napari_covidseg.models.checkpoint.LoadedModel` whose class 0 is
    background; the new target is its lesion probability ``1 - p(background)`` x :data:`SOFT_LESION_MAX`, the same
    lesion-only soft target as a pseudo-label PNG (loop.soft_lesion_loss). The slices must have been prepared with
    the teacher's intensity window (they are the student's prepared slices: same window, any input size — the
    teacher sees them resized to its own input size and its map is resized back). Used for the bundled models
    (scripts/train_bundled.py) and ``covidseg train --extra-teacher``; a teacher trained on data that includes a
    held-out set leaks it (scripts/semi_supervised_cv.py uses a per-fold teacher for that reason).
    """
    import torch.nn.functional as F

    from napari_covidseg.inference.device import resolve_device

    device = resolve_device(device)
    card = teacher.card
    if card.task != "segmentation" or len(card.input_size) != 2 or not card.class_names:
        raise InputError(f"teacher {card.name!r} is not a 2D segmentation model")
    if card.class_names[0].lower() != "background":
        raise InputError(f"teacher {card.name!r}: class 0 is {card.class_names[0]!r}, not background")
    module = teacher.module.to(device).eval()
    size = tuple(card.input_size)
    targets = []
    with torch.inference_mode():
        for i in range(0, len(extra), batch_size):
            x = extra.images[i : i + batch_size].to(device)
            shape = tuple(x.shape[-2:])
            if shape != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            p = module(x).float().softmax(dim=1)[:, :1]
            if shape != size:
                p = F.interpolate(p, size=shape, mode="bilinear", align_corners=False)
            targets.append(((1.0 - p[:, 0]).clamp(0, 1) * SOFT_LESION_MAX).round().long().cpu())
    labels = torch.cat(targets) if targets else extra.labels.clone()
    who = name or card.name
    description = f"{extra.description}, relabelled by teacher {who!r} (lesion probability)"
    return SliceDataset(extra.images, labels, extra.names, extra.groups, description, extra.files)
