"""Fine-tuning a segmentation model on a radiologist's corrections, with a before/after check.

A corrections folder holds ``images/<key>.nii.gz`` + ``masks/<key>.nii.gz`` (one corrected slice per file).
:func:`iter_finetune` trains a copy of a base model on them and saves it as a new user model: the base is never
changed, and nothing is written until training and the check have finished (closing the generator or cancelling
leaves no files). With at least :data:`MIN_FOR_HOLDOUT` corrected slices some are held back, never trained on, and
the Dice of the base and of the fine-tuned model are compared on them; with fewer, the comparison is on the training
slices and says so.

When the corrections use a class the base cannot output (pleural effusion, 3, for the bundled models), the new
model's output head is expanded: every base weight is copied, the head's existing rows exactly, and the new rows
keep their fresh initialisation.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import re
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from napari_covidseg.analysis.metrics import INFECTION, MEAN_OVER_IMAGES, aggregate
from napari_covidseg.constants import LESION_CLASSES, LESION_COLOURS
from napari_covidseg.errors import InputError
from napari_covidseg.inference.device import autocast, resolve_device
from napari_covidseg.inference.segment import Progress, run_generator
from napari_covidseg.io import source_stem
from napari_covidseg.models.card import ModelCard
from napari_covidseg.models.checkpoint import (
    Checkpoint,
    LoadedModel,
    check_new_model_name,
    list_checkpoints,
    resolve_model,
    save_checkpoint,
    trash_user_model,
    user_models_dir,
)
from napari_covidseg.models.registry import get_architecture
from napari_covidseg.training.datasets import SliceDataset, load_corrections
from napari_covidseg.training.run import TrainSettings, iter_train_model

__all__ = [
    "FinetuneResult",
    "FinetuneSettings",
    "MIN_FOR_HOLDOUT",
    "expand_classes",
    "finetune",
    "iter_finetune",
    "suggest_name",
    "trash_user_model",
]

MIN_FOR_HOLDOUT = 5  # corrected slices needed before any are held back for the before/after check
_FT_SUFFIX = re.compile(r"(.+)-ft\d+")


@dataclass(frozen=True)
class FinetuneSettings:
    """How a fine-tune runs: a short, gentle training of the whole network (recorded in the card).

    ``crop``: random training crop side (96 px: 4x fewer pixels per step than a 192-px slice, so a fine-tune on
    10 slices takes well under a minute on a laptop CPU), None for the whole slice. ``holdout``: fraction of the
    corrected slices held back for the before/after check (0 switches it off), used only with at least
    ``MIN_FOR_HOLDOUT`` slices.
    """

    steps: int = 100
    lr: float = 3e-4
    batch_size: int = 8
    crop: int | None = 96
    seed: int = 0
    holdout: float = 0.2


@dataclass
class FinetuneResult:
    """The saved model, its loss per step, and Dice of the base (``before``) and of it (``after``).

    ``before``/``after`` map ``"dice <class>"`` (each lesion class of the new card, and ``"dice infection"``) to the
    mean over slices of ``evaluated_on``; classes absent from both prediction and reference on every slice are left
    out. ``seconds``: the whole run (preparing, training, checking, saving).
    """

    checkpoint: Checkpoint
    losses: list[float]
    before: dict[str, float]
    after: dict[str, float]
    evaluated_on: str
    train_keys: list[str]
    test_keys: list[str]
    seconds: float


def suggest_name(base: str, folder: str | Path | None = None) -> str:
    """``<base>-ftN`` with the first N >= 1 not taken by an installed model (nor by a file in ``folder``).

    A base that is itself a fine-tune (``unet-ft2``) gives ``unet-ft3``, not ``unet-ft2-ft1``.
    """
    match = _FT_SUFFIX.fullmatch(base)
    root = match.group(1) if match else base
    taken = {c.name for c in list_checkpoints()}
    folders = {user_models_dir(), *([Path(folder)] if folder is not None else [])}
    n = 1
    while True:
        suffix = f"-ft{n}"
        name = root[: 80 - len(suffix)] + suffix
        if name not in taken and not any(
            (f / f"{name}{ext}").exists() for f in folders for ext in (".json", ".safetensors")
        ):
            return name
        n += 1


def expand_classes(module: nn.Module, card: ModelCard, num_classes: int) -> tuple[nn.Module, ModelCard, dict]:
    """A network and card like ``module``/``card`` but with ``num_classes`` outputs (more than the card has).

    Built fresh from the card's architecture and config; every base tensor (parameters and buffers) is copied where
    the shapes match, and a tensor that differs only in its first dimension (the output head's weight and bias)
    gets the base rows copied into its first rows, the new rows keeping their initialisation. Works from the
    state dicts, so it does not depend on how the architecture names its head. Returns the network, the card
    (a copy) and a record for ``card.training``.
    """
    if not card.num_classes < num_classes <= len(LESION_CLASSES):
        raise InputError(f"can only expand {card.num_classes} classes to {card.num_classes + 1}..{len(LESION_CLASSES)}")
    new_card = copy.deepcopy(card)
    new_card.classes = [*card.classes] + [
        {"id": i, "name": LESION_CLASSES[i], "colour": list(LESION_COLOURS[i])}
        for i in range(card.num_classes, num_classes)
    ]
    if "num_classes" in new_card.config:
        new_card.config["num_classes"] = num_classes
    config = {k: v for k, v in card.config.items() if k not in ("num_classes", "in_channels")}
    arch = get_architecture(card.architecture)
    new = arch.build(in_channels=int(card.config.get("in_channels", 1)), num_classes=num_classes, **config)
    old_state, state = module.state_dict(), new.state_dict()
    rows, fresh = [], []
    for key, target in state.items():
        source = old_state.get(key)
        if source is not None and source.shape == target.shape:
            target.copy_(source)
        elif (
            source is not None
            and source.dim() == target.dim() >= 1
            and source.shape[1:] == target.shape[1:]
            and source.shape[0] < target.shape[0]
        ):
            target[: source.shape[0]] = source
            rows.append(key)
        else:
            fresh.append(key)
    new.load_state_dict(state)
    record = {
        "from_classes": card.num_classes,
        "to_classes": num_classes,
        "new_classes": [LESION_CLASSES[i] for i in range(card.num_classes, num_classes)],
        "rows_copied": rows,
        "left_at_initialisation": fresh,
    }
    return new.eval(), new_card, record


def slice_dice(module: nn.Module, data: SliceDataset, num_classes: int, device: str = "auto") -> dict[str, float]:
    """Dice of ``module`` on prepared slices (argmax at input size): per lesion class 1..num_classes-1 and the
    infection group, mean over slices; undefined values (class absent everywhere) are left out."""
    dev = resolve_device(device)
    module.to(dev).eval()
    preds = []
    with torch.inference_mode(), autocast(dev):
        for start in range(0, len(data), 8):
            preds.append(module(data.images[start : start + 8].to(dev)).float().argmax(dim=1).cpu())
    pred, target = torch.cat(preds).numpy(), data.labels.numpy()
    scores = aggregate(
        zip(pred, target, strict=True), MEAN_OVER_IMAGES, classes=range(1, num_classes), groups=INFECTION
    )
    return {f"dice {name}": round(v["dice"], 4) for name, v in scores.items() if not math.isnan(v["dice"])}


def _split(keys: list[str], n_slices: int, holdout: float) -> tuple[list[str], list[str]]:
    """(train, test) keys: every k-th of the sorted keys held back, evenly spread; none when too few."""
    keys = sorted(keys)
    if holdout <= 0 or n_slices < MIN_FOR_HOLDOUT or len(keys) < 2:
        return keys, []
    n_test = min(max(1, round(holdout * len(keys))), len(keys) - 1)
    picked = {int((i + 0.5) * len(keys) / n_test) for i in range(n_test)}
    return [k for i, k in enumerate(keys) if i not in picked], [k for i, k in enumerate(keys) if i in picked]


def _version(base_version: str, now: dt.datetime) -> str:
    """``<base>+ft.YYYYmmdd.HHMMSS`` (semver build metadata; appended with '.' if the base already has some)."""
    return f"{base_version}{'.' if '+' in base_version else '+'}ft.{now:%Y%m%d.%H%M%S}"


def iter_finetune(
    base: str | Path | Checkpoint | LoadedModel,
    corrections: str | Path,
    name: str,
    settings: FinetuneSettings = FinetuneSettings(),
    *,
    keys: list[str] | None = None,
    device: str = "auto",
    out_dir: str | Path | None = None,
) -> Generator[Progress, None, FinetuneResult]:
    """Fine-tune ``base`` (a segmentation model) on the corrections folder and save it as ``name``.

    A generator (for napari's ``thread_worker``): yields ``Progress(0, steps, "preparing")``, then
    ``Progress(step, steps, "training", loss)`` after every step, ``Progress(steps, steps, "evaluating")`` and
    ``Progress(steps, steps, "saving")``, and returns a :class:`FinetuneResult`. The checkpoint is written only at
    the very end, to ``out_dir`` (default: the user models folder); closing the generator earlier writes nothing.

    ``keys`` restricts training to those corrections (file names without ``.nii.gz``); None takes the whole
    folder. Raises :class:`InputError` (on the first ``next()``, before any training) for a taken or invalid
    name, ``steps < 1``, unknown keys, or no corrected slices.
    """
    start = time.perf_counter()
    folder = Path(out_dir) if out_dir is not None else user_models_dir()
    if settings.steps < 1 or settings.batch_size < 1:
        raise InputError("fine-tuning needs steps >= 1 and batch size >= 1")
    if not 0 <= settings.holdout < 1:
        raise InputError("holdout must be a fraction in [0, 1)")
    check_new_model_name(name, folder)
    if keys is not None and not keys:
        raise InputError("no corrections chosen to fine-tune on")
    corrections = Path(corrections)
    if not corrections.is_dir():
        raise InputError(f"{corrections}: not a folder (a corrections folder holds images/ and masks/)")
    steps = settings.steps
    yield Progress(0, steps, "preparing")

    loaded = resolve_model(base, task="segmentation")
    base_card = loaded.card
    data = load_corrections(corrections, base_card)
    key_of = [source_stem(g) for g in data.groups]
    if keys is not None:
        wanted = set(keys)
        unknown = sorted(wanted - set(key_of))
        if unknown:
            raise InputError(f"{corrections}: no corrected slice named {', '.join(unknown[:5])}")
        data = data.subset([i for i, k in enumerate(key_of) if k in wanted])
        key_of = [source_stem(g) for g in data.groups]
    if len(data) == 0:
        raise InputError(f"{corrections}: no corrected slices to fine-tune on")
    top = int(data.labels.max())
    if top >= len(LESION_CLASSES):
        raise InputError(f"{corrections}: label {top} is not a lesion class (0..{len(LESION_CLASSES) - 1})")

    train_keys, test_keys = _split(sorted(set(key_of)), len(data), settings.holdout)
    test_set = set(test_keys)
    train = data.subset([i for i, k in enumerate(key_of) if k not in test_set])
    if test_keys:
        check = data.subset([i for i, k in enumerate(key_of) if k in test_set])
        evaluated_on = f"{len(check)} held-back corrected slice(s), never trained on"
    else:
        check = train
        why = "hold-back switched off" if settings.holdout <= 0 else "too few corrections to hold any back"
        evaluated_on = f"the {len(train)} training slices ({why}; not a test score)"

    module = copy.deepcopy(loaded.module)  # the caller's model (or the installed one) is never changed
    num_classes = max(base_card.num_classes, top + 1)
    before = slice_dice(module, check, num_classes, device)
    expanded = None
    if num_classes > base_card.num_classes:
        module, card, expanded = expand_classes(module.cpu(), base_card, num_classes)
    else:
        card = copy.deepcopy(base_card)

    now = dt.datetime.now().astimezone().replace(microsecond=0)
    card.name, card.sha256, card.training = name, "", {}
    card.version = _version(base_card.version, now)
    train_settings = TrainSettings(
        steps=steps, batch_size=settings.batch_size, lr=settings.lr, crop=settings.crop, seed=settings.seed
    )
    gen = iter_train_model(train, card, train_settings, device=device, model=module)
    try:
        while True:
            try:
                step, total, loss = next(gen)
            except StopIteration as done:
                trained, result = done.value
                break
            yield Progress(step, total, "training", loss)
    finally:
        gen.close()
    yield Progress(steps, steps, "evaluating")
    after = slice_dice(trained.module, check, num_classes, device)
    trained.module.cpu()

    card.training = {
        "parent": base_card.name,
        "parent_sha256": base_card.sha256,
        "parent_version": base_card.version,
        **card.training,
        "data": f"fine-tune of {base_card.name} on {len(train_keys)} corrected slices in {corrections.resolve()}",
        "corrections_folder": str(corrections.resolve()),
        "corrections": train_keys,
        "held_back": test_keys,
        "holdout_fraction": settings.holdout,
        "date": now.isoformat(),
    }
    if expanded is not None:
        card.training["head_expanded"] = expanded
    card.metrics = {
        "protocol": f"fine-tune check: Dice (mean over slices) before -> after on {evaluated_on}; "
        f"prepared {'x'.join(map(str, card.input_size))} slices, argmax of the network output",
        "values": {"before": before, "after": after},
    }
    note = f"Fine-tune of {base_card.name} on {len(train)} corrected slice(s) ({now:%Y-%m-%d})"
    if expanded is not None:
        new = ", ".join(expanded["new_classes"])
        note += (
            f"; output head expanded from {expanded['from_classes']} to {expanded['to_classes']} classes: {new} "
            f"learnt from these corrections only (notes above about {base_card.name}'s classes describe the parent)"
        )
    card.notes = f"{base_card.notes} {note}.".strip()
    yield Progress(steps, steps, "saving")
    ckpt = save_checkpoint(trained.module, card, folder)
    return FinetuneResult(
        ckpt, list(result.losses), before, after, evaluated_on, train_keys, test_keys, time.perf_counter() - start
    )


def finetune(
    base: str | Path | Checkpoint | LoadedModel,
    corrections: str | Path,
    name: str,
    settings: FinetuneSettings = FinetuneSettings(),
    *,
    keys: list[str] | None = None,
    device: str = "auto",
    out_dir: str | Path | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FinetuneResult:
    """Run :func:`iter_finetune` to the end: ``progress(Progress)`` after every update; when ``should_stop()``
    says so it stops, raises :class:`~napari_covidseg.inference.Cancelled` and nothing is saved."""
    gen = iter_finetune(base, corrections, name, settings, keys=keys, device=device, out_dir=out_dir)
    return run_generator(gen, progress, should_stop)
