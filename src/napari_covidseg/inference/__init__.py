"""Inference on CT volumes: per-slice lesion segmentation and whole-volume classification with a CAM."""

from napari_covidseg.inference.classify import Classification, classify_volume, iter_classify
from napari_covidseg.inference.device import resolve_device
from napari_covidseg.inference.segment import (
    Cancelled,
    Progress,
    Segmentation,
    iter_segment,
    run_generator,
    segment_volume,
)

__all__ = [
    "Cancelled",
    "Classification",
    "Progress",
    "Segmentation",
    "classify_volume",
    "iter_classify",
    "iter_segment",
    "resolve_device",
    "run_generator",
    "segment_volume",
]
