"""The segmentation training loop: Dice + cross-entropy, Adam, cosine schedule, callbacks, cancellation.

Input tensors come from :func:`napari_covidseg.inference.preprocess.prepare_slices`, so a network is trained on
slices prepared exactly as inference prepares them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from napari_covidseg.errors import InputError
from napari_covidseg.inference.device import autocast, resolve_device
from napari_covidseg.inference.segment import Cancelled
from napari_covidseg.training.augment import NONE, Augment, augment_batch

SCHEDULES = ("cosine", "plateau")
T = TypeVar("T")


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Cross-entropy plus soft Dice loss averaged over the foreground classes present in the batch or predicted."""
    ce = F.cross_entropy(logits, target)
    probs = logits.float().softmax(dim=1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + smooth) / (denom + smooth)
    return ce + (1 - dice[1:]).mean()


@dataclass
class TrainResult:
    """Loss per step, wall time, and whether the run finished."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


def slice_weights(labels: torch.Tensor) -> torch.Tensor:
    """Sampling weight per slice: 1, plus 1/frequency for every lesion class the slice contains.

    Rare classes (consolidation, effusion) then appear in most batches instead of a few per epoch.
    """
    classes = range(1, int(labels.max()) + 1)
    if not classes:
        return torch.ones(len(labels))
    present = torch.stack([(labels == c).flatten(1).any(1) for c in classes], dim=1).float()
    frequency = present.mean(dim=0).clamp_min(1.0 / len(labels))
    return 1.0 + (present / frequency).sum(dim=1)


def cosine_schedule(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate from its start value down to 0 over ``steps`` on half a cosine; stepped once per step."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))


class TrainingDiverged(InputError):
    """The loss became NaN or infinite: the run stops and saves nothing."""


MAX_LR = 1.0


def check_hyperparameters(lr: float, steps: int, batch_size: int, names=("learning rate", "steps", "batch size")):
    """One readable line for a learning rate, step count or batch size no training can use (``names``: how the
    caller calls them, e.g. the CLI's options). A rate of 0 is allowed (nothing changes); NaN, inf, < 0 are not."""
    lr_name, steps_name, batch_name = names
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or not 0 <= lr <= MAX_LR:
        raise InputError(f"{lr_name} must be a number from 0 to {MAX_LR:g}, got {lr!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 10_000_000:
        raise InputError(f"{steps_name} must be an integer from 1 to 10,000,000, got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 4096:
        raise InputError(f"{batch_name} must be an integer from 1 to 4096, got {batch_size!r}")


def optimiser_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Backward + update through the gradient scaler (a no-op scaler off CUDA)."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


def record_step(
    result: TrainResult,
    step: int,
    steps: int,
    loss: float,
    progress: Callable[[int, int, float], None] | None,
    should_stop: Callable[[], bool] | None,
) -> None:
    """Keep the loss history, report progress, and raise :class:`Cancelled` when asked to stop.

    A loss that is NaN or infinite ends the run with :class:`TrainingDiverged`: the weights are garbage from then on,
    and a run that saved them would give an all-background model that looks fine."""
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"training diverged at step {step} of {steps} (loss {loss}): the learning rate is too high for this data "
            "or the data holds extreme values; nothing was saved"
        )
    result.losses.append(loss)
    result.steps = step
    if progress is not None:
        progress(step, steps, loss)
    if should_stop is not None and should_stop():
        raise Cancelled(f"training cancelled at step {step}")


def iter_train_segmentation(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "auto",
    augment: bool | Augment = True,
    schedule: str = "cosine",
) -> Generator[tuple[int, int, float], None, TrainResult]:
    """Train ``model`` in place on ``images`` (N, 1, H, W) in [0, 1] and ``labels`` (N, H, W) int64.

    A generator (for napari's ``thread_worker``): yields ``(step, steps, loss)`` after every optimiser step and
    returns the :class:`TrainResult`. Closing it stops training after the current step (the model is then
    half-trained: discard it). Arguments are checked on the first ``next()``.

    Adam with weight decay; ``schedule`` "cosine" (to zero over ``steps``) or "plateau" (halve the rate when the
    mean loss of the last ``max(steps // 20, 5)`` steps stops falling); mixed precision on CUDA; fixed seeds.
    ``augment``: ``True`` for the default :class:`Augment`, ``False`` for none, or an :class:`Augment`.
    """
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError("need the same, non-zero number of images and labels")
    check_hyperparameters(lr, steps, batch_size)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}")
    settings = Augment() if augment is True else (NONE if augment is False else augment)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dev = resolve_device(device)
    model.to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
    if schedule == "cosine":
        sched = cosine_schedule(opt, steps)
    else:
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2)
    window = max(steps // 20, 5)
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda")
    weights = slice_weights(labels)
    result, start = TrainResult(), time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.multinomial(weights, min(batch_size, len(images)), replacement=True, generator=gen)
        x, y = images[idx].to(dev), labels[idx].to(dev)
        x, y = augment_batch(x, y, gen, settings)
        with autocast(dev):
            loss = dice_ce_loss(model(x), y)
        optimiser_step(loss, opt, scaler)
        value = loss.item()
        record_step(result, step, steps, value, None, None)
        yield step, steps, value
        if schedule == "cosine":
            sched.step()
        elif step % window == 0:
            sched.step(sum(result.losses[-window:]) / window)
    result.seconds = time.perf_counter() - start
    model.eval()
    return result


def drive_steps(
    gen: Generator[tuple[int, int, float], None, T],
    progress: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> T:
    """Run a ``(step, steps, loss)`` generator to the end and return its value.

    ``progress(step, steps, loss)`` is called after every step; when ``should_stop()`` says so the generator is
    closed and :class:`Cancelled` raised.
    """
    try:
        while True:
            step, steps, loss = next(gen)
            if progress is not None:
                progress(step, steps, loss)
            if should_stop is not None and should_stop():
                gen.close()
                raise Cancelled(f"training cancelled at step {step}")
    except StopIteration as done:
        return done.value


def train_segmentation(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "auto",
    augment: bool | Augment = True,
    schedule: str = "cosine",
    progress: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Run :func:`iter_train_segmentation` to the end (same arguments, same training).

    ``progress(step, steps, loss)`` is called after every step (the loss history is ``TrainResult.losses``);
    ``should_stop()`` is checked after every step and raises :class:`Cancelled` (the caller then discards the
    model: nothing half-trained is saved here).
    """
    gen = iter_train_segmentation(
        model,
        images,
        labels,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        augment=augment,
        schedule=schedule,
    )
    return drive_steps(gen, progress, should_stop)
