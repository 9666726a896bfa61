"""Whole training runs: a model card for a new model, training on a :class:`SliceDataset`, k-fold cross-validation.

`covidseg train`, the cross-validation script, the bundled-weights script and the fine-tune dock all go through
:func:`train_model`, so every model is made the same way and described by the same kind of card.
"""

from __future__ import annotations

import datetime as dt
import platform
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import torch

from napari_covidseg.analysis.evaluate import score_pairs
from napari_covidseg.constants import LESION_CLASSES, LESION_COLOURS, MEDSEG_HU_WINDOW
from napari_covidseg.errors import InputError
from napari_covidseg.models import build_model
from napari_covidseg.models.card import ModelCard
from napari_covidseg.models.checkpoint import LoadedModel
from napari_covidseg.training.augment import Augment
from napari_covidseg.training.datasets import SliceDataset
from napari_covidseg.training.loop import ExtraData, TrainResult, drive_steps, iter_train_segmentation


@dataclass(frozen=True)
class TrainSettings:
    """How a segmentation model is trained (recorded in its card)."""

    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    crop: int | None = 128
    scale: tuple[float, float] = (0.5, 1.5)
    schedule: str = "cosine"
    seed: int = 0
    extra_share: float = 0.5  # fraction of each batch from the soft-labelled extra data, when there is any
    extra_weight: float = 0.5  # weight of their loss (soft_lesion_loss) next to the labelled loss

    def protocol(self, extra: SliceDataset | None = None) -> dict:
        semi = {}
        if extra is not None:
            semi = {
                "extra_data": extra.description,
                "extra_slices": len(extra),
                "extra_share_per_batch": self.extra_share,
                "extra_weight": self.extra_weight,
                "extra_loss": "binary cross-entropy + soft Dice of lesion probability (1 - p(background)) against "
                "the soft target; no class split from those slices",
            }
        return {
            **semi,
            "optimiser": "Adam (weight decay 1e-5)",
            "loss": "cross-entropy + soft Dice over the lesion classes",
            "schedule": self.schedule,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "seed": self.seed,
            "sampling": "class-balanced slice sampling (slices with rarer classes drawn more often)",
            "augmentation": f"rotation by 0/90/180/270 degrees, left-right flip, zoom {self.scale[0]}-{self.scale[1]} "
            f"(log-uniform), random {self.crop or 'full'}-pixel crops, contrast/brightness/gamma jitter",
        }


def new_card(
    name: str,
    architecture: str,
    config: dict,
    *,
    num_classes: int = 3,
    size: int = 192,
    hu_window: tuple[float, float] = MEDSEG_HU_WINDOW,
    intensity_note: str = "",
    notes: str = "",
) -> ModelCard:
    """Card of an untrained segmentation model: classes 0..num_classes-1 of ``LESION_CLASSES``."""
    if not 2 <= num_classes <= len(LESION_CLASSES):
        raise InputError(f"num_classes must be 2..{len(LESION_CLASSES)}")
    classes = [{"id": i, "name": LESION_CLASSES[i], "colour": list(LESION_COLOURS[i])} for i in range(num_classes)]
    intensity = {"hu_window": [float(v) for v in hu_window], "display_window": [0, 255]}
    if intensity_note:
        intensity["note"] = intensity_note
    card = ModelCard(
        name=name,
        architecture=architecture,
        config=dict(config),
        task="segmentation",
        classes=classes,
        input_size=[size, size],
        intensity=intensity,
        notes=notes,
    )
    card.validate(f"model {name!r}")  # the settings are checked before anything is built
    return card


def iter_train_model(
    data: SliceDataset,
    card: ModelCard,
    settings: TrainSettings = TrainSettings(),
    *,
    device: str = "auto",
    model: torch.nn.Module | None = None,
    extra: SliceDataset | None = None,
    run_dir: str | Path | None = None,
    checkpoint_seconds: float = 300.0,
) -> Generator[tuple[int, int, float], None, tuple[LoadedModel, TrainResult]]:
    """Train ``model`` (default: a fresh network from ``card``) on ``data``; fill ``card.training``.

    A generator (for napari's ``thread_worker``): yields ``(step, steps, loss)`` after every step and returns
    ``(LoadedModel, TrainResult)``; the checks below run on the first ``next()``, before any training.
    ``data`` must have been prepared for this card (same input size and intensity window).
    ``extra``: soft lesion targets (:func:`~napari_covidseg.training.datasets.load_soft_lesions`) joining every batch
    (``settings.extra_share``, ``settings.extra_weight``). ``run_dir``: resumable run (see
    :func:`~napari_covidseg.training.loop.iter_train_segmentation`); the same call resumes it.
    """
    if list(data.images.shape[-2:]) != list(card.input_size):
        raise InputError(f"data prepared at {tuple(data.images.shape[-2:])}, the model takes {card.input_size}")
    top = int(data.labels.max())
    if top >= card.num_classes:
        raise InputError(
            f"the data has label {top} ({LESION_CLASSES.get(top, '?')}) but the model has only classes "
            f"{', '.join(card.class_names)}"
        )
    torch.manual_seed(settings.seed)
    if model is None:
        model = build_model(card.architecture, num_classes=card.num_classes, **card.config)
    augment = Augment(scale=settings.scale, crop=settings.crop)
    if extra is not None and list(extra.images.shape[-2:]) != list(card.input_size):
        raise InputError(f"extra data prepared at {tuple(extra.images.shape[-2:])}, the model takes {card.input_size}")
    semi = None if extra is None else ExtraData(extra.images, extra.labels, settings.extra_share, settings.extra_weight)
    fingerprint = {
        "architecture": card.architecture,
        "config": card.config,
        "classes": card.num_classes,
        "input_size": card.input_size,
        "protocol": settings.protocol(extra),
        "data": [data.description, len(data)],
    }
    result = yield from iter_train_segmentation(
        model,
        data.images,
        data.labels,
        steps=settings.steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        seed=settings.seed,
        device=device,
        augment=augment,
        schedule=settings.schedule,
        extra=semi,
        run_dir=run_dir,
        checkpoint_seconds=checkpoint_seconds,
        fingerprint=fingerprint,
    )
    card.training = {
        **card.training,
        "data": data.description,
        "slices": len(data),
        "images": sorted(set(data.groups)),
        "class_pixels": {LESION_CLASSES.get(k, str(k)): v for k, v in data.class_pixels().items()},
        "protocol": settings.protocol(extra),
        "final_loss_mean_last_50": sum(result.losses[-50:]) / len(result.losses[-50:]),
        "seconds": round(result.seconds, 1),
        "device": str(next(model.parameters()).device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": dt.date.today().isoformat(),
    }
    return LoadedModel(model.cpu().eval(), card, source=f"trained in memory: {card.name}"), result


def train_model(
    data: SliceDataset,
    card: ModelCard,
    settings: TrainSettings = TrainSettings(),
    *,
    device: str = "auto",
    model: torch.nn.Module | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    extra: SliceDataset | None = None,
    run_dir: str | Path | None = None,
    checkpoint_seconds: float = 300.0,
) -> tuple[LoadedModel, TrainResult]:
    """Run :func:`iter_train_model` to the end: ``progress(step, steps, loss)`` after every step, and
    :class:`~napari_covidseg.inference.Cancelled` when ``should_stop()`` says so (nothing is saved here)."""
    gen = iter_train_model(
        data,
        card,
        settings,
        device=device,
        model=model,
        extra=extra,
        run_dir=run_dir,
        checkpoint_seconds=checkpoint_seconds,
    )
    return drive_steps(gen, progress, should_stop)


def cross_validate_fold(
    data: SliceDataset,
    folds: list[int],
    fold: int,
    card: ModelCard,
    settings: TrainSettings,
    *,
    device: str = "auto",
    progress: Callable[[int, int, float], None] | None = None,
    extra: SliceDataset | None = None,
    run_dir: str | Path | None = None,
) -> dict:
    """Train on every fold but ``fold`` and score the held-out slices exactly as ``covidseg evaluate`` does.

    ``folds`` gives the fold of each source image, in the order of ``data.files``. Held-out images are read back
    from their original files and scored at their own resolution. ``extra`` (soft lesion targets) joins the
    training of every fold; the held-out fold stays labelled-only. ``run_dir``: resumable (see :func:`train_model`).
    """
    if len(folds) != len(data.files):
        raise InputError("need one fold number per source image")
    held = {data.files[i][0].name for i, f in enumerate(folds) if f == fold}
    held_stems = {n.rsplit(".", 1)[0] for n in held}
    train_idx = [i for i, g in enumerate(data.groups) if g not in held and g not in held_stems]
    if not train_idx or len(train_idx) == len(data):
        raise InputError(f"fold {fold} leaves no training or no held-out data")
    loaded, result = train_model(
        data.subset(train_idx), card, settings, device=device, progress=progress, extra=extra, run_dir=run_dir
    )
    pairs = [p for i, p in enumerate(data.files) if folds[i] == fold]
    report = score_pairs(pairs, loaded, device=device)
    report["fold"] = fold
    report["held_out"] = [p[0].name for p in pairs]
    report["train_seconds"] = round(result.seconds, 1)
    report["final_loss"] = card.training["final_loss_mean_last_50"]
    return report
