"""Training: the one loop behind full training, cross-validation and fine-tuning, plus the 3D classifier's loop."""

from napari_covidseg.training.augment import Augment, augment_batch
from napari_covidseg.training.datasets import SliceDataset, load_corrections, load_dataset, load_medseg, load_pairs
from napari_covidseg.training.finetune import (
    FinetuneResult,
    FinetuneSettings,
    finetune,
    iter_finetune,
    suggest_name,
    trash_user_model,
)
from napari_covidseg.training.loop import TrainResult, dice_ce_loss, iter_train_segmentation, train_segmentation
from napari_covidseg.training.run import TrainSettings, iter_train_model, new_card, train_model

__all__ = [
    "Augment",
    "FinetuneResult",
    "FinetuneSettings",
    "SliceDataset",
    "TrainResult",
    "TrainSettings",
    "augment_batch",
    "dice_ce_loss",
    "finetune",
    "iter_finetune",
    "iter_train_model",
    "iter_train_segmentation",
    "load_corrections",
    "load_dataset",
    "load_medseg",
    "load_pairs",
    "new_card",
    "suggest_name",
    "train_model",
    "train_segmentation",
    "trash_user_model",
]
