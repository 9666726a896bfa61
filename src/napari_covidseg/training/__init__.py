"""Training: the one loop behind full training, cross-validation and fine-tuning, plus the 3D classifier's loop."""

from napari_covidseg.training.augment import Augment, augment_batch
from napari_covidseg.training.datasets import SliceDataset, load_corrections, load_dataset, load_medseg, load_pairs
from napari_covidseg.training.loop import TrainResult, dice_ce_loss, train_segmentation
from napari_covidseg.training.run import TrainSettings, new_card, train_model

__all__ = [
    "Augment",
    "SliceDataset",
    "TrainResult",
    "TrainSettings",
    "augment_batch",
    "dice_ce_loss",
    "load_corrections",
    "load_dataset",
    "load_medseg",
    "load_pairs",
    "new_card",
    "train_model",
    "train_segmentation",
]
