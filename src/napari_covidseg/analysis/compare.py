"""Two segmentation models on one CT: where they disagree, volumes per class and Dice between them (and a reference).

The Compare dock runs :func:`iter_compare` in its worker and only turns the result into layers and a table.
"""

from __future__ import annotations

import numpy as np

from napari_covidseg.analysis.metrics import INFECTION, class_name, score_image
from napari_covidseg.constants import DEFAULT_BATCH_SIZE
from napari_covidseg.inference.lungfirst import find_lungs
from napari_covidseg.inference.segment import Progress, iter_segment, resolve_framing
from napari_covidseg.io.volume import CTVolume

# Values of the disagreement layer ("lesion" = any foreground class); 0 = both agree.
ONLY_A, ONLY_B, OTHER_CLASS = 1, 2, 3
DISAGREEMENT_NAMES: dict[int, str] = {  # {a} / {b} become the model names in the layer's features
    0: "agree",
    ONLY_A: "lesion only in {a}",
    ONLY_B: "lesion only in {b}",
    OTHER_CLASS: "lesion in both, different class",
}
INFECTION_ROW = "infection (GGO+consolidation)"


def disagreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """uint8 map of where two label arrays disagree: ONLY_A, ONLY_B, OTHER_CLASS, else 0."""
    out = np.zeros(a.shape, dtype=np.uint8)
    in_a, in_b = a != 0, b != 0
    out[in_a & ~in_b] = ONLY_A
    out[in_b & ~in_a] = ONLY_B
    out[in_a & in_b & (a != b)] = OTHER_CLASS
    return out


def compare_rows(a, b, ref, classes: dict[int, str], voxel_ml: float) -> list[dict]:
    """One dict per foreground class of ``classes`` plus the infection group: volumes (ml) and Dice scores.

    Dice comes from :func:`score_image` (NaN when the class is in neither array); the reference columns
    (``dice A vs reference``, ``dice B vs reference``) are there only when ``ref`` is given.
    """
    ids = [int(i) for i in classes if i != 0]
    groups = {INFECTION_ROW: tuple(next(iter(INFECTION.values())))}
    members = {class_name(i): (i,) for i in ids} | groups
    labels = {class_name(i): classes[i] for i in ids} | {INFECTION_ROW: INFECTION_ROW}
    scores = {"A vs B": score_image(a, b, ids, groups)}
    if ref is not None:
        scores |= {
            "A vs reference": score_image(a, ref, ids, groups),
            "B vs reference": score_image(b, ref, ids, groups),
        }
    # one count per class (np.bincount would make an int64 copy of each whole volume)
    count = {m: {i: int(np.count_nonzero(np.asarray(x) == i)) for i in ids} for m, x in (("A", a), ("B", b))}
    rows = []
    for key, label in labels.items():
        row: dict = {"class": label}
        for m, c in count.items():
            row[f"volume {m} (ml)"] = float(sum(c.get(i, 0) for i in members[key])) * voxel_ml
        for pair, score in scores.items():
            row[f"dice {pair}"] = score[key]["dice"]
        rows.append(row)
    return rows


def iter_compare(
    volume: CTVolume, checkpoints, device: str, ref: np.ndarray | None, voxel_ml: float, framing: str = "auto"
):
    """Segment ``volume`` with model A then model B; one progress count over both (A's slices, then B's).

    ``framing`` as in :func:`~napari_covidseg.inference.segment.iter_segment`; lung-first finds the lungs once for
    both models, so both keep lesions inside the same lung region.

    A generator (napari's thread worker runs it). Returns ``(segmentation A, segmentation B, disagreement, rows,
    disagreement ml)``: the disagreement map and ``ref`` in the volume's own shape (2-D for a single slice), rows
    from :func:`compare_rows`, and the volume where the two disagree.
    """
    n, segs = volume.shape[0], []
    mode, _ = resolve_framing(framing, volume.intensity)
    lungs = None
    if volume.intensity == "HU":
        yield Progress(0, len(checkpoints) * n, "finding the lungs")
        lungs = find_lungs(volume)
    for k, ckpt in enumerate(checkpoints):
        stage = f"segmenting with {ckpt.name} ({k + 1}/{len(checkpoints)})"
        gen = iter_segment(volume, ckpt, device=device, batch_size=DEFAULT_BATCH_SIZE, framing=mode, lungs=lungs)
        segs.append((yield from _shifted(gen, k * n, len(checkpoints) * n, stage)))
    squeezed = bool(volume.meta.get("squeezed"))
    a, b = (seg.labels[0] if squeezed else seg.labels for seg in segs)
    classes = {c["id"]: c["name"] for c in segs[0].card.classes}
    diff = disagreement(a, b)
    return segs[0], segs[1], diff, compare_rows(a, b, ref, classes, voxel_ml), np.count_nonzero(diff) * voxel_ml


def _shifted(gen, offset: int, total: int, stage: str):
    """Re-yield ``gen``'s Progress as ``offset + done`` of ``total``; return what ``gen`` returns."""
    while True:
        try:
            update = next(gen)
        except StopIteration as stop:
            return stop.value
        yield Progress(offset + update.done, total, stage)
