"""The segmentation training loop: Dice + cross-entropy, Adam, cosine schedule, callbacks, cancellation.

Input tensors come from :func:`napari_covidseg.inference.preprocess.prepare_slices`, so a network is trained on
slices prepared exactly as inference prepares them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
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


def soft_lesion_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Loss of a soft "lesion vs not" target (B, H, W) in [0, 1] on multi-class logits (B, K, H, W).

    Lesion probability = 1 - p(background), the sum over the lesion classes; binary cross-entropy plus soft Dice
    on it. The split between the lesion classes is left to the labelled slices.
    """
    probs = logits.float().softmax(dim=1)
    lesion = (1.0 - probs[:, 0]).clamp(1e-6, 1 - 1e-6)
    bce = F.binary_cross_entropy(lesion, target)
    inter = (lesion * target).sum()
    dice = (2 * inter + smooth) / (lesion.sum() + target.sum() + smooth)
    return bce + (1 - dice)


@dataclass
class ExtraData:
    """Extra slices with soft lesion targets and how they join training.

    Attributes:
        images: (M, 1, H, W) float in [0, 1], prepared like the labelled slices.
        targets: (M, H, W) int64, lesion probability x 255.
        share: fraction of every batch drawn from them (at least one slice of each kind per batch).
        weight: their loss is multiplied by this before it is added to the labelled loss.
    """

    images: torch.Tensor
    targets: torch.Tensor
    share: float = 0.5
    weight: float = 0.5


STATE_NAME = "state.pt"


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
    extra: ExtraData | None = None,
    run_dir: str | Path | None = None,
    checkpoint_seconds: float = 300.0,
    fingerprint: dict | None = None,
) -> Generator[tuple[int, int, float], None, TrainResult]:
    """Train ``model`` in place on ``images`` (N, 1, H, W) in [0, 1] and ``labels`` (N, H, W) int64.

    A generator (for napari's ``thread_worker``): yields ``(step, steps, loss)`` after every optimiser step and
    returns the :class:`TrainResult`. Closing it stops training after the current step (the model is then
    half-trained: discard it). Arguments are checked on the first ``next()``.

    Adam with weight decay; ``schedule`` "cosine" (to zero over ``steps``) or "plateau" (halve the rate when the
    mean loss of the last ``max(steps // 20, 5)`` steps stops falling); mixed precision on CUDA; fixed seeds.
    ``augment``: ``True`` for the default :class:`Augment`, ``False`` for none, or an :class:`Augment`.

    ``extra``: soft-labelled slices (pseudo-labels) that join every batch (:class:`ExtraData`,
    :func:`soft_lesion_loss`). ``run_dir``: the run survives a stop. Every ``checkpoint_seconds`` (and at the
    end) the model, optimiser, schedule, both random generators, the step and the loss history are written
    atomically to ``run_dir/state.pt``; the same call with the same ``run_dir`` resumes from it and reaches the
    same weights as a run that never stopped. ``fingerprint`` (the settings, JSON-able) must match the saved run.
    """
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError("need the same, non-zero number of images and labels")
    check_hyperparameters(lr, steps, batch_size)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}")
    if extra is not None:
        if len(extra.images) == 0 or len(extra.images) != len(extra.targets):
            raise InputError("the extra data needs the same, non-zero number of images and targets")
        if not (0 < extra.share < 1 and math.isfinite(extra.weight) and extra.weight >= 0) or batch_size < 2:
            raise InputError("extra data: share must be in (0, 1), weight >= 0, and the batch at least 2 slices")
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
    n_extra = 0 if extra is None else min(max(1, round(batch_size * extra.share)), batch_size - 1)
    result, start = TrainResult(), time.perf_counter()
    state_path = Path(run_dir) / STATE_NAME if run_dir is not None else None
    print_ = json.dumps(fingerprint or {}, sort_keys=True, default=str)
    first = 1
    if state_path is not None and state_path.is_file():
        first, prior = _resume(state_path, print_, model, opt, sched, scaler, gen, result, steps)
        start -= prior
    last_save = time.monotonic()
    for step in range(first, steps + 1):
        idx = torch.multinomial(weights, min(batch_size - n_extra, len(images)), replacement=True, generator=gen)
        x, y = images[idx].to(dev), labels[idx].to(dev)
        x, y = augment_batch(x, y, gen, settings)
        if n_extra:
            jdx = torch.randint(0, len(extra.images), (n_extra,), generator=gen)
            xe, te = augment_batch(extra.images[jdx].to(dev), extra.targets[jdx].to(dev), gen, settings)
            x = torch.cat([x, xe])
        with autocast(dev):
            logits = model(x)
            loss = dice_ce_loss(logits[: len(y)], y)
            if n_extra:
                loss = loss + extra.weight * soft_lesion_loss(logits[len(y) :], te.float() / 255.0)
        optimiser_step(loss, opt, scaler)
        value = loss.item()
        record_step(result, step, steps, value, None, None)
        if schedule == "cosine":
            sched.step()
        elif step % window == 0:
            sched.step(sum(result.losses[-window:]) / window)
        if state_path is not None and (step == steps or time.monotonic() - last_save >= checkpoint_seconds):
            result.seconds = time.perf_counter() - start
            _save_state(state_path, print_, step, model, opt, sched, scaler, gen, result)
            last_save = time.monotonic()
        yield step, steps, value
    result.seconds = time.perf_counter() - start
    model.eval()
    return result


def _save_state(path: Path, fingerprint: str, step: int, model, opt, sched, scaler, gen, result: TrainResult) -> None:
    """Everything the next step depends on, written atomically (never executed on load: weights_only)."""
    from napari_covidseg.io.writers import write_atomic

    state = {
        "format": 1,
        "fingerprint": fingerprint,
        "step": step,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimiser": opt.state_dict(),
        "schedule": sched.state_dict(),
        "scaler": scaler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "generator": gen.get_state(),
        "losses": list(result.losses),
        "seconds": float(result.seconds),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda fh: torch.save(state, fh))


def _resume(path: Path, fingerprint: str, model, opt, sched, scaler, gen, result: TrainResult, steps: int):
    """Load a saved run into the objects; returns (first step to run, seconds already spent)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values only
        saved = state["fingerprint"]
        if saved != fingerprint:
            raise InputError(
                f"{path.parent}: this run folder holds a run with other settings ({_diff(saved, fingerprint)}); "
                "use the same command to resume it, or another --run-dir"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimiser"])
        sched.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        gen.set_state(state["generator"])
        result.losses = [float(v) for v in state["losses"]]
        step, seconds = int(state["step"]), float(state["seconds"])
    except InputError:
        raise
    except Exception as exc:  # unpickling refused, truncated file, missing keys, other shapes
        raise InputError(f"{path}: the saved run cannot be resumed ({' '.join(str(exc).split())[:200]})") from exc
    result.steps = step
    return min(step, steps) + 1, seconds


def _diff(saved: str, now: str) -> str:
    try:
        a, b = json.loads(saved), json.loads(now)
    except ValueError:
        return "unreadable settings"
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)!r} then, {b.get(k)!r} now" for k in keys[:3]) or "same keys"


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
