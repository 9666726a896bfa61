"""Segmentation metrics: hand-computed values, NaN conventions, the two aggregations, the infection group."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from napari_covidseg.analysis import metrics
from napari_covidseg.analysis.metrics import (
    INFECTION,
    MEAN_OVER_IMAGES,
    METRICS,
    POOLED,
    Counts,
    aggregate,
    confusion_counts,
    confusion_matrix,
    count_image,
    score_image,
    scores_from_counts,
)
from napari_covidseg.constants import CONSOLIDATION, EFFUSION, GGO, LESION_CLASSES

NAMES = {c: LESION_CLASSES[c] for c in (GGO, CONSOLIDATION, EFFUSION)}

# One small "image": 6 voxels, labels 0..2 (no effusion anywhere).
PRED = np.array([GGO, GGO, 0, 0, CONSOLIDATION, 0])
TARGET = np.array([GGO, 0, GGO, 0, CONSOLIDATION, CONSOLIDATION])


def assert_scores(actual: dict, expected: dict) -> None:
    for metric in METRICS:
        a, e = actual[metric], expected[metric]
        if math.isnan(e):
            assert math.isnan(a), f"{metric}: expected NaN, got {a}"
        else:
            assert a == pytest.approx(e), metric


def test_confusion_matrix_by_hand():
    m = confusion_matrix(PRED, TARGET)
    # rows: prediction 0, 1, 2; columns: reference 0, 1, 2
    np.testing.assert_array_equal(m, [[1, 1, 1], [1, 1, 0], [0, 0, 1]])
    assert m.sum() == PRED.size
    assert confusion_matrix(PRED, TARGET, n_labels=5).shape == (5, 5)


def test_confusion_counts_by_hand():
    assert confusion_counts(PRED, TARGET, GGO) == Counts(tp=1, fp=1, fn=1, tn=3)
    assert confusion_counts(PRED, TARGET, CONSOLIDATION) == Counts(tp=1, fp=0, fn=1, tn=4)
    assert confusion_counts(PRED, TARGET, EFFUSION) == Counts(tp=0, fp=0, fn=0, tn=6)
    assert confusion_counts(PRED, TARGET, (GGO, CONSOLIDATION)) == Counts(tp=2, fp=1, fn=2, tn=1)
    assert confusion_counts(PRED, TARGET, 7) == Counts(0, 0, 0, 6)  # an id that occurs nowhere


def test_scores_from_counts_every_metric():
    s = scores_from_counts(Counts(tp=3, fp=1, fn=2, tn=14))
    assert s["dice"] == pytest.approx(6 / 9)
    assert s["iou"] == pytest.approx(3 / 6)
    assert s["precision"] == pytest.approx(3 / 4)
    assert s["recall"] == pytest.approx(3 / 5)
    assert s["specificity"] == pytest.approx(14 / 15)
    assert set(s) == set(METRICS)


def test_nan_when_denominator_is_zero():
    empty_both = scores_from_counts(Counts(0, 0, 0, 10))
    assert_scores(empty_both, dict.fromkeys(METRICS[:4], float("nan")) | {"specificity": 1.0})
    missed = scores_from_counts(Counts(0, 0, 5, 5))  # nothing predicted: precision undefined
    assert_scores(missed, {"dice": 0.0, "iou": 0.0, "precision": float("nan"), "recall": 0.0, "specificity": 1.0})
    false_alarm = scores_from_counts(Counts(0, 4, 0, 6))  # nothing to find: recall undefined
    assert_scores(false_alarm, {"dice": 0.0, "iou": 0.0, "precision": 0.0, "recall": float("nan"), "specificity": 0.6})
    all_positive = scores_from_counts(Counts(5, 0, 0, 0))  # no negatives: specificity undefined
    assert math.isnan(all_positive["specificity"]) and all_positive["dice"] == 1.0


def test_score_image_by_hand_with_infection_group():
    scores = score_image(PRED, TARGET, groups=INFECTION)
    assert list(scores) == [NAMES[GGO], NAMES[CONSOLIDATION], NAMES[EFFUSION], "infection"]
    assert_scores(scores[NAMES[GGO]], {"dice": 0.5, "iou": 1 / 3, "precision": 0.5, "recall": 0.5, "specificity": 0.75})
    assert_scores(
        scores[NAMES[CONSOLIDATION]],
        {"dice": 2 / 3, "iou": 0.5, "precision": 1.0, "recall": 0.5, "specificity": 1.0},
    )
    nan = float("nan")
    assert_scores(
        scores[NAMES[EFFUSION]],
        {"dice": nan, "iou": nan, "precision": nan, "recall": nan, "specificity": 1.0},
    )
    assert_scores(
        scores["infection"],
        {"dice": 4 / 7, "iou": 0.4, "precision": 2 / 3, "recall": 0.5, "specificity": 0.5},
    )
    # no group unless asked; a chosen subset of classes
    assert list(score_image(PRED, TARGET)) == [NAMES[GGO], NAMES[CONSOLIDATION], NAMES[EFFUSION]]
    assert list(score_image(PRED, TARGET, classes=[GGO])) == [NAMES[GGO]]


def test_infection_group_equals_union_of_masks():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 4, (6, 20, 30)).astype(np.uint8)
    target = rng.integers(0, 4, (6, 20, 30)).astype(np.uint8)
    p = np.isin(pred, (GGO, CONSOLIDATION))
    t = np.isin(target, (GGO, CONSOLIDATION))
    expected = Counts(int(np.sum(p & t)), int(np.sum(p & ~t)), int(np.sum(~p & t)), int(np.sum(~p & ~t)))
    assert count_image(pred, target, groups=INFECTION)["infection"] == expected
    # the same as scoring the binary union masks as class 1
    union = score_image(p.astype(np.uint8), t.astype(np.uint8), classes=[1])[LESION_CLASSES[1]]
    assert score_image(pred, target, groups=INFECTION)["infection"] == pytest.approx(union)


def test_perfect_prediction_scores_one():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, (4, 16, 16)).astype(np.uint8)
    for name, s in score_image(labels, labels.copy(), groups=INFECTION).items():
        assert all(s[m] == 1.0 for m in METRICS), name


def test_disjoint_prediction_scores_zero():
    target = np.zeros((2, 8, 8), dtype=np.uint8)
    pred = np.zeros_like(target)
    target[0, :4], pred[0, 4:] = GGO, GGO
    target[1, :2], pred[1, 6:] = EFFUSION, EFFUSION
    scores = score_image(pred, target)
    for c in (GGO, EFFUSION):
        s = scores[NAMES[c]]
        assert s["dice"] == s["iou"] == s["precision"] == s["recall"] == 0.0
        assert 0.0 < s["specificity"] < 1.0


def _mean_vs_pooled_images():
    a_pred = np.zeros(20, dtype=np.uint8)
    a_pred[:10] = GGO
    a = (a_pred, a_pred.copy())  # GGO found perfectly: Dice 1
    b_target = np.zeros(20, dtype=np.uint8)
    b_target[:2] = GGO
    b = (np.zeros(20, dtype=np.uint8), b_target)  # small GGO missed: Dice 0, precision NaN
    c = (np.zeros(20, dtype=np.uint8), np.zeros(20, dtype=np.uint8))  # no GGO anywhere: excluded
    return [a, b, c]


def test_mean_over_images_vs_pooled_differ():
    images = _mean_vs_pooled_images()
    mean = aggregate(images, mode=MEAN_OVER_IMAGES, classes=[GGO])[NAMES[GGO]]
    pooled = aggregate(images, mode=POOLED, classes=[GGO])[NAMES[GGO]]
    # mean over images: (1 + 0) / 2, image c left out, NaN precision of image b skipped
    assert_scores(mean, {"dice": 0.5, "iou": 0.5, "precision": 1.0, "recall": 0.5, "specificity": 1.0})
    assert mean["n_images"] == 2
    # pooled: tp 10, fp 0, fn 2, tn 10 + 18 + 20
    assert_scores(pooled, {"dice": 20 / 22, "iou": 10 / 12, "precision": 1.0, "recall": 10 / 12, "specificity": 1.0})
    assert pooled["n_images"] == 3
    assert mean["dice"] != pytest.approx(pooled["dice"])


def test_aggregate_accepts_precomputed_counts_and_single_image_agrees():
    images = _mean_vs_pooled_images()
    counts = [count_image(p, t, groups=INFECTION) for p, t in images]
    for mode in (MEAN_OVER_IMAGES, POOLED):
        from_pairs = aggregate(images, mode=mode, groups=INFECTION)
        from_counts = aggregate(counts, mode=mode)
        assert from_pairs.keys() == from_counts.keys()
        for name in from_pairs:
            assert_scores(from_counts[name], from_pairs[name])
            assert from_counts[name]["n_images"] == from_pairs[name]["n_images"]
    # with one image both aggregations equal the image's own scores
    one = [(PRED, TARGET)]
    single = score_image(PRED, TARGET)
    for mode in (MEAN_OVER_IMAGES, POOLED):
        agg = aggregate(one, mode=mode)
        assert_scores(agg[NAMES[GGO]], single[NAMES[GGO]])
        assert agg[NAMES[GGO]]["n_images"] == 1


def test_class_absent_everywhere_gives_nan_without_warnings():
    images = _mean_vs_pooled_images()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean = aggregate(images, mode=MEAN_OVER_IMAGES)[NAMES[EFFUSION]]
        pooled = aggregate(images, mode=POOLED)[NAMES[EFFUSION]]
    assert mean["n_images"] == 0 and all(math.isnan(mean[m]) for m in METRICS)
    assert math.isnan(pooled["dice"]) and pooled["specificity"] == 1.0 and pooled["n_images"] == 3


def test_chunked_counting_matches_direct(monkeypatch):
    rng = np.random.default_rng(2)
    pred = rng.integers(0, 4, (5, 33, 17)).astype(np.int16)
    target = rng.integers(0, 4, (5, 33, 17)).astype(np.int64)
    monkeypatch.setattr(metrics, "_CHUNK", 100)  # many chunks, the last one partial
    m = confusion_matrix(pred, target)
    expected = np.array([[np.sum((pred == i) & (target == j)) for j in range(4)] for i in range(4)])
    np.testing.assert_array_equal(m, expected)


def test_invalid_inputs_rejected():
    with pytest.raises(ValueError, match="shape"):
        score_image(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(TypeError):
        score_image(np.zeros(4, float), np.zeros(4, int))
    with pytest.raises(ValueError, match="negative"):
        score_image(np.array([-1, 0]), np.array([0, 0]))
    with pytest.raises(ValueError, match="mode"):
        aggregate([(PRED, TARGET)], mode="median")
    with pytest.raises(ValueError, match="n_labels"):
        confusion_matrix(np.array([3]), np.array([0]), n_labels=2)
