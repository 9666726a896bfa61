"""Score a model on a folder of images against same-stem reference masks (how published numbers are made)."""

from __future__ import annotations

from pathlib import Path

from napari_covidseg.analysis.metrics import (
    AGGREGATIONS,
    INFECTION,
    aggregate,
    count_image,
    json_safe,
    scores_from_counts,
)
from napari_covidseg.errors import InputError
from napari_covidseg.inference import segment_volume
from napari_covidseg.io import is_supported, load_ct, source_stem
from napari_covidseg.io.labels import find_mask, load_labels
from napari_covidseg.models.checkpoint import resolve_model


def evaluate_folder(
    images_dir: Path, masks_dir: Path, model, *, device: str = "auto", per_image: bool = False, progress=None
) -> dict:
    """Segment every image in ``images_dir`` and score it against ``masks_dir/<same stem>.*``.

    Returns a JSON-ready dict: per-class (and infection = GGO ∪ consolidation) Dice — and the other metrics —
    both "mean over images" and "pooled", with the number of images used.
    """
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise InputError(f"{folder}: not a folder")
    images = sorted((p for p in images_dir.iterdir() if p.is_file() and is_supported(p)), key=lambda p: p.name)
    pairs = [(img, find_mask(masks_dir, source_stem(img))) for img in images]
    pairs = [(img, mask) for img, mask in pairs if mask is not None]
    if not pairs:
        raise InputError(f"no image in {images_dir} has a mask with the same name in {masks_dir}")
    report = score_pairs(pairs, model, device=device, per_image=per_image, progress=progress)
    report["skipped_without_mask"] = len(images) - len(pairs)
    return report


def score_pairs(pairs, model, *, device: str = "auto", per_image: bool = False, progress=None) -> dict:
    """Segment each (image, mask) pair's image on its own and score it: the protocol of :func:`evaluate_folder`.

    Cross-validation scores its held-out slices through this same function.
    """
    loaded = resolve_model(model, task="segmentation")
    classes = [c["id"] for c in loaded.card.classes if c["id"] != 0]
    groups = INFECTION if all(c in classes for c in INFECTION["infection"]) else None
    counts, rows = [], []
    for i, (img, mask) in enumerate(pairs):
        volume, reference = load_ct(img), load_labels(mask)
        if reference.shape != volume.shape:
            raise InputError(f"{mask}: mask shape {reference.shape} differs from image {volume.shape}")
        pred = segment_volume(volume, loaded, device=device).labels
        image_counts = count_image(pred, reference, classes, groups)
        counts.append(image_counts)
        if per_image:
            rows.append(
                {
                    "image": img.name,
                    "dice": json_safe({k: scores_from_counts(c)["dice"] for k, c in image_counts.items()}),
                }
            )
        if progress is not None:
            progress(i + 1, len(pairs))
    results = {mode: aggregate(counts, mode=mode) for mode in AGGREGATIONS}
    names = list(results[AGGREGATIONS[0]])
    report = {
        "model": loaded.card.name,
        "images": len(pairs),
        "protocol": "each image segmented on its own; Dice per class, 'mean over images' skips images where the "
        "class is absent from both prediction and reference; 'pooled' sums voxels over all images",
        "dice": json_safe({n: {mode: results[mode][n]["dice"] for mode in AGGREGATIONS} for n in names}),
        "metrics": json_safe(results),
    }
    if per_image:
        report["per_image"] = rows
    return report
