"""Per-class segmentation metrics: Dice, IoU (Jaccard), precision, recall (sensitivity), specificity.

Inputs are integer label arrays `pred` and `target` of the same shape (any dimensionality, e.g. (z, y, x)),
holding the class ids of constants.LESION_CLASSES (0 background). Each class is scored one-vs-rest;
a *group* (e.g. "infection" = GGO or consolidation) is scored as the union of its class ids in both arrays.

Two aggregations over several images are available, named exactly:

* MEAN_OVER_IMAGES = "mean over images": score every image, then average the per-image values.
  When a class is absent from both the prediction and the reference of an image, its Dice (and IoU)
  is undefined (0/0); that image is left out of the class's mean for every metric (its specificity
  would be a trivial 1). Other undefined per-image values (precision when nothing was predicted,
  recall when there is no reference) are NaN and skipped (NaN-aware mean). `n_images` is the number
  of images in which the class occurs in prediction or reference.
* POOLED = "pooled": sum TP/FP/FN/TN over all images, then compute each metric once.
  `n_images` is the number of images pooled (all of them).

A metric whose denominator is 0 is NaN, never silently 0 or 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from napari_covidseg.constants import BACKGROUND, CONSOLIDATION, GGO, LESION_CLASSES

METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall", "specificity")
MEAN_OVER_IMAGES = "mean over images"
POOLED = "pooled"
AGGREGATIONS: tuple[str, ...] = (MEAN_OVER_IMAGES, POOLED)
DEFAULT_CLASSES: tuple[int, ...] = tuple(c for c in LESION_CLASSES if c != BACKGROUND)
INFECTION: dict[str, tuple[int, ...]] = {"infection": (GGO, CONSOLIDATION)}

_CHUNK = 1 << 22  # voxels per bincount call, bounds the temporary memory for 512x512x300 volumes


@dataclass(frozen=True)
class Counts:
    """Voxel counts of one class (or group) of one or more images: true/false positives/negatives."""

    tp: int
    fp: int
    fn: int
    tn: int

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def present(self) -> bool:
        """Whether the class occurs in the prediction or the reference."""
        return self.tp + self.fp + self.fn > 0


def class_name(class_id: int) -> str:
    """Name of a class id from constants.LESION_CLASSES, or 'class N' for other ids."""
    return LESION_CLASSES.get(int(class_id), f"class {int(class_id)}")


def _check_pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {pred.shape} vs {target.shape}")
    for name, a in (("pred", pred), ("target", target)):
        if a.dtype == bool:
            continue
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"{name} must hold integer labels, got dtype {a.dtype}")
        if a.size and a.min() < 0:
            raise ValueError(f"{name} has negative labels")
    return pred, target


def confusion_matrix(pred: np.ndarray, target: np.ndarray, n_labels: int | None = None) -> np.ndarray:
    """Voxel confusion matrix M (int64, n_labels x n_labels): M[p, t] = #voxels with pred p and target t.

    One bincount of pred * n_labels + target per chunk of voxels, so large volumes need little memory.
    Labels >= n_labels raise ValueError; n_labels defaults to the largest label + 1.
    """
    pred, target = _check_pair(pred, target)
    top = max(int(pred.max()) if pred.size else 0, int(target.max()) if target.size else 0) + 1
    n = top if n_labels is None else int(n_labels)
    if top > n:
        raise ValueError(f"label {top - 1} does not fit n_labels={n}")
    dtype = np.min_scalar_type(n * n - 1)
    p, t = pred.reshape(-1), target.reshape(-1)
    matrix = np.zeros(n * n, dtype=np.int64)
    for start in range(0, p.size, _CHUNK):
        chunk = slice(start, start + _CHUNK)
        code = p[chunk].astype(dtype) * dtype.type(n) + t[chunk].astype(dtype)
        matrix += np.bincount(code, minlength=n * n)
    return matrix.reshape(n, n)


def _counts_from_matrix(matrix: np.ndarray, ids: Sequence[int]) -> Counts:
    ids = [i for i in ids if i < matrix.shape[0]]  # a label beyond the matrix occurs nowhere
    tp = int(matrix[np.ix_(ids, ids)].sum())
    fp = int(matrix[ids, :].sum()) - tp
    fn = int(matrix[:, ids].sum()) - tp
    return Counts(tp, fp, fn, int(matrix.sum()) - tp - fp - fn)


def confusion_counts(pred: np.ndarray, target: np.ndarray, class_id: int | Sequence[int]) -> Counts:
    """TP/FP/FN/TN voxels of one class id, or of the union of several ids (a group)."""
    ids = (int(class_id),) if np.isscalar(class_id) else tuple(int(c) for c in class_id)
    return count_image(pred, target, classes=(), groups={"ids": ids})["ids"]


def _resolve(classes: Iterable[int] | None, groups: Mapping[str, Sequence[int]] | None) -> dict[str, tuple[int, ...]]:
    """Output name -> class ids, classes first (names from LESION_CLASSES) then groups."""
    classes = DEFAULT_CLASSES if classes is None else tuple(int(c) for c in classes)
    named = {class_name(c): (c,) for c in classes}
    for name, ids in (groups or {}).items():
        if name in named:
            raise ValueError(f"group name {name!r} clashes with a class name")
        named[name] = tuple(int(i) for i in ids)
    return named


def count_image(
    pred: np.ndarray,
    target: np.ndarray,
    classes: Iterable[int] | None = None,
    groups: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Counts]:
    """Counts of every class (default: the lesion classes 1..3) and group of one image, from one pass."""
    named = _resolve(classes, groups)
    pred, target = _check_pair(pred, target)
    n = max([max(ids) + 1 for ids in named.values()] + [int(a.max()) + 1 for a in (pred, target) if a.size])
    matrix = confusion_matrix(pred, target, n)
    return {name: _counts_from_matrix(matrix, ids) for name, ids in named.items()}


def _ratio(num: int, den: int) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def scores_from_counts(counts: Counts) -> dict[str, float]:
    """Dice, IoU, precision, recall, specificity of counts; NaN where the denominator is 0."""
    tp, fp, fn, tn = counts.tp, counts.fp, counts.fn, counts.tn
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
    }


def score_image(
    pred: np.ndarray,
    target: np.ndarray,
    classes: Iterable[int] | None = None,
    groups: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of one image: {class or group name: {metric: value}}; e.g. groups=INFECTION."""
    return {name: scores_from_counts(c) for name, c in count_image(pred, target, classes, groups).items()}


def aggregate(
    images: Iterable[tuple[np.ndarray, np.ndarray] | Mapping[str, Counts]],
    mode: str = MEAN_OVER_IMAGES,
    classes: Iterable[int] | None = None,
    groups: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics over several images: {name: {metric: value, "n_images": n}}.

    `images` holds (pred, target) pairs or per-image counts from count_image (then classes and
    groups are ignored). mode is "mean over images" or "pooled"; see the module docstring for the
    conventions when a class is absent.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"mode must be one of {AGGREGATIONS}, got {mode!r}")
    per_image: list[Mapping[str, Counts]] = []
    for item in images:
        if not isinstance(item, Mapping):
            item = count_image(item[0], item[1], classes, groups)
        per_image.append(item)
    if not per_image:
        raise ValueError("no images to aggregate")
    result: dict[str, dict[str, float]] = {}
    for name in per_image[0]:
        counts = [image[name] for image in per_image]
        if mode == POOLED:
            total = counts[0]
            for c in counts[1:]:
                total = total + c
            result[name] = {**scores_from_counts(total), "n_images": len(counts)}
            continue
        used = [scores_from_counts(c) for c in counts if c.present]
        entry: dict[str, float] = {}
        for metric in METRICS:
            values = np.array([s[metric] for s in used], dtype=float)
            values = values[~np.isnan(values)]
            entry[metric] = float(values.mean()) if values.size else float("nan")
        entry["n_images"] = len(used)
        result[name] = entry
    return result


def json_safe(value, digits: int = 4):
    """Metrics for JSON (files, model cards, CLI output): NaN becomes None (null), floats are rounded."""
    if isinstance(value, Mapping):
        return {k: json_safe(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, digits) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else round(float(value), digits)
    if isinstance(value, np.integer):
        return int(value)
    return value
