"""Where the lesions are along z: lesion voxels per axial slice, for "go to the slice with the most lesion" and
stepping through lesion slices (the Segment and Correct docks; Qt-free)."""

from __future__ import annotations

import numpy as np


def lesion_voxels_per_slice(labels: np.ndarray) -> np.ndarray:
    """Number of lesion voxels (label > 0) in each axial slice of ``labels`` (z, y, x): int64, length z.

    Counted a slice at a time, so a 300 x 512 x 512 mask needs no full-size boolean or int64 copy.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"expected a (z, y, x) label volume, got {labels.ndim} dimensions")
    return np.fromiter((np.count_nonzero(s) for s in labels), dtype=np.int64, count=labels.shape[0])


def busiest_slice(counts: np.ndarray) -> int | None:
    """The slice with the most lesion voxels (the lowest such z on a tie); None when there is no lesion."""
    counts = np.asarray(counts)
    if counts.size == 0 or counts.max() <= 0:
        return None
    return int(np.argmax(counts))


def next_lesion_slice(counts: np.ndarray, z: int, step: int) -> int | None:
    """The nearest lesion slice after ``z`` (``step`` = +1) or before it (``step`` = -1); None when there is none."""
    if step not in (1, -1):
        raise ValueError("step must be +1 or -1")
    idx = np.flatnonzero(np.asarray(counts) > 0)
    if step > 0:
        later = idx[idx > z]
        return int(later[0]) if later.size else None
    earlier = idx[idx < z]
    return int(earlier[-1]) if earlier.size else None
