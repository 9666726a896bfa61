"""The Qt-free numbers behind the Compare dock."""

from __future__ import annotations

import numpy as np


def test_compare_core_disagreement_and_volumes():
    """The Compare dock's numbers come from the Qt-free core: the disagreement map and per-class volumes."""
    from napari_covidseg.analysis.compare import INFECTION_ROW, ONLY_A, ONLY_B, OTHER_CLASS, compare_rows, disagreement

    a = np.zeros((2, 4, 4), np.uint8)
    b = np.zeros_like(a)
    a[0, 0, :2] = 1  # two GGO voxels only in A
    b[1, 1, 0] = 2  # one consolidation voxel only in B
    a[1, 2, 2], b[1, 2, 2] = 1, 2  # lesion in both, different class
    a[1, 3, 3] = b[1, 3, 3] = 1  # agree
    diff = disagreement(a, b)
    assert (diff == ONLY_A).sum() == 2 and (diff == ONLY_B).sum() == 1 and (diff == OTHER_CLASS).sum() == 1
    assert (diff != 0).sum() == 4
    rows = compare_rows(a, b, None, {0: "background", 1: "ground-glass opacity", 2: "consolidation"}, voxel_ml=0.5)
    by = {r["class"]: r for r in rows}
    assert by["ground-glass opacity"]["volume A (ml)"] == 2.0 and by["ground-glass opacity"]["volume B (ml)"] == 0.5
    assert by["consolidation"]["volume A (ml)"] == 0.0 and by["consolidation"]["volume B (ml)"] == 1.0
    assert by[INFECTION_ROW]["volume A (ml)"] == 2.0 and by[INFECTION_ROW]["volume B (ml)"] == 1.5
