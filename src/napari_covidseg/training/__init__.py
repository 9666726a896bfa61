"""Training: the one loop behind full training, cross-validation and fine-tuning."""

from napari_covidseg.training.loop import TrainResult, dice_ce_loss, train_segmentation

__all__ = ["TrainResult", "dice_ce_loss", "train_segmentation"]
