"""Lesion slices along z (analysis.slices): counts, the busiest slice, stepping to the next and previous."""

from __future__ import annotations

import numpy as np
import pytest

from napari_covidseg.analysis.slices import busiest_slice, lesion_voxels_per_slice, next_lesion_slice


def test_counts_busiest_and_steps():
    labels = np.zeros((6, 8, 8), np.uint8)
    labels[1, :2, :2] = 1  # 4 voxels
    labels[3, :3, :3] = 2  # 9 voxels, the busiest
    labels[4, 0, 0] = 3  # 1 voxel
    counts = lesion_voxels_per_slice(labels)
    assert counts.tolist() == [0, 4, 0, 9, 1, 0]
    assert busiest_slice(counts) == 3
    assert next_lesion_slice(counts, 0, 1) == 1
    assert next_lesion_slice(counts, 1, 1) == 3
    assert next_lesion_slice(counts, 4, 1) is None
    assert next_lesion_slice(counts, 3, -1) == 1
    assert next_lesion_slice(counts, 1, -1) is None
    assert next_lesion_slice(counts, 5, -1) == 4


def test_no_lesion_and_bad_input():
    counts = lesion_voxels_per_slice(np.zeros((3, 4, 4), np.uint8))
    assert busiest_slice(counts) is None and next_lesion_slice(counts, 0, 1) is None
    with pytest.raises(ValueError):
        lesion_voxels_per_slice(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        next_lesion_slice(counts, 0, 2)
