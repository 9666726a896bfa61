"""Training the whole-volume 3D classifier (COVID-19 / common pneumonia / normal) from labelled CT volumes.

Each volume's class comes from its folder or file name (:func:`class_from_path`). Volumes are prepared exactly as
:func:`napari_covidseg.inference.classify.iter_classify` prepares them (body crop, window, resize to the card's
``(D, H, W)``), so a trained model sees the same input at inference. :func:`train_classifier` is the loop
(cross-entropy, Adam, cosine schedule, class-balanced sampling, light augmentation); :func:`leave_one_out` is a
pipeline check for tiny data sets; :func:`run_train_classifier` is what ``covidseg train-classifier`` runs.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from napari_covidseg.constants import DIAGNOSIS_CLASSES, DIAGNOSIS_COLOURS, LUNG_WINDOW
from napari_covidseg.errors import InputError
from napari_covidseg.inference.classify import _resample_to_input
from napari_covidseg.inference.device import autocast, resolve_device
from napari_covidseg.inference.preprocess import body_box
from napari_covidseg.io import is_supported, load_ct
from napari_covidseg.io.images import IMAGE_SUFFIXES
from napari_covidseg.io.volume import CTVolume
from napari_covidseg.models import build_model
from napari_covidseg.models.card import ModelCard
from napari_covidseg.models.checkpoint import check_new_model_name, save_checkpoint, user_models_dir
from napari_covidseg.training.loop import TrainResult, cosine_schedule, optimiser_step, record_step

ARCHITECTURE = "daresnet18_3d"
DEFAULT_SIZE = (32, 96, 96)
DEFAULT_WIDTH = 8
BATCH_SIZE = 2
LOO_PROTOCOL = "leave-one-out over {n} volumes: a pipeline check, not an accuracy estimate"

# Folder names and file-name prefixes (lower case) -> class index in DIAGNOSIS_CLASSES.
_FOLDER_ALIASES: dict[str, int] = {
    "covid19": 0,
    "covid": 0,
    "cap": 1,
    "pneumonia": 1,
    "commonpneumonia": 1,
    "normal": 2,
    "healthy": 2,
}
# A file-name prefix must be followed by the end of the name or a non-alphanumeric separator ("_", "-", ".", " ").
_PREFIX = re.compile(r"^(covid[-_ ]?19|covid|common[-_ ]pneumonia|pneumonia|cap|normal|healthy)(?![a-z0-9])")
_VOLUME_SUFFIXES = (".nii", ".nii.gz", ".npy")

Report = Callable[[str], None]


def _alias_key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def class_from_path(path: str | Path) -> int | None:
    """Class index (0 COVID-19, 1 common pneumonia, 2 normal) from the parent folder name or the file-name prefix.

    Case-insensitive aliases: COVID-19/covid/covid19; CAP/pneumonia/common pneumonia/common_pneumonia;
    normal/healthy. ``covid/scan1.nii.gz`` -> 0, ``CAP_cap001.nii.gz`` -> 1, ``Normal_normal001.nii.gz`` -> 2.
    Returns None when neither tells the class, or when the folder and the prefix disagree.
    """
    path = Path(path)
    from_folder = _FOLDER_ALIASES.get(_alias_key(path.parent.name))
    match = _PREFIX.match(path.name.lower())
    from_name = _FOLDER_ALIASES[_alias_key(match.group(1))] if match else None
    if from_folder is not None and from_name is not None and from_folder != from_name:
        return None
    return from_name if from_name is not None else from_folder


def _volumes_under(folder: Path) -> list[Path]:
    """NIfTI / .npy files under ``folder`` and every folder that directly holds DICOM files (one series each)."""
    found: list[Path] = []
    has_dicom = False
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            found.extend(_volumes_under(entry))
        elif entry.name.lower().endswith(_VOLUME_SUFFIXES):
            found.append(entry)
        elif not entry.name.lower().endswith(IMAGE_SUFFIXES) and is_supported(entry):
            has_dicom = True
    if has_dicom:
        found.append(folder)
    return found


def find_volumes(paths: Iterable[str | Path]) -> list[tuple[Path, int]]:
    """CT volumes (NIfTI files, DICOM series folders, .npy) at or under ``paths``, each with its class index.

    PNG/JPG slices are not volumes and are ignored. Raises :class:`InputError` (one line) when a path does not
    exist, nothing is found, or the class of a volume cannot be told from its folder or file name.
    """
    volumes: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        if path.is_dir():
            volumes.extend(_volumes_under(path))
        elif path.name.lower().endswith(_VOLUME_SUFFIXES) or (
            not path.name.lower().endswith(IMAGE_SUFFIXES) and is_supported(path)
        ):
            volumes.append(path if path.name.lower().endswith(_VOLUME_SUFFIXES) else path.parent)
        else:
            raise InputError(f"{path}: not a CT volume (use NIfTI, a DICOM series folder or .npy)")
    unique = list(dict.fromkeys(p.resolve() for p in volumes))
    if not unique:
        where = ", ".join(str(p) for p in paths) or "(no paths given)"
        raise InputError(f"no CT volumes (NIfTI, DICOM series folder, .npy) found in {where}")
    out = []
    for path in unique:
        cls = class_from_path(path)
        if cls is None:
            raise InputError(
                f"{path}: cannot tell its class; put it in a folder named COVID-19, CAP or normal, "
                "or start the file name with one of these followed by '_'"
            )
        out.append((path, cls))
    return out


def prepare_volume(volume: CTVolume, card: ModelCard) -> torch.Tensor:
    """``(1, D, H, W)`` network input of ``volume``, prepared exactly as inference prepares it."""
    ys, xs = body_box(volume.array, volume.intensity)
    return _resample_to_input(volume, card, ys, xs)[0]


@dataclass
class Example:
    """One prepared training volume: source file, network input ``(1, D, H, W)``, class index."""

    file: str
    x: torch.Tensor
    target: int


def load_examples(found: Sequence[tuple[Path, int]], card: ModelCard, log: Report | None = None) -> list[Example]:
    """Load and prepare every ``(path, class)`` of :func:`find_volumes` (one volume in memory at a time)."""
    examples = []
    for i, (path, cls) in enumerate(found, 1):
        volume = load_ct(path)
        examples.append(Example(str(path), prepare_volume(volume, card), cls))
        if log is not None:
            log(f"loaded {i}/{len(found)} {path.name} ({DIAGNOSIS_CLASSES[cls]}, {'x'.join(map(str, volume.shape))})")
    return examples


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random left-right flip, a shift of a few voxels per axis (``torch.roll``) and intensity jitter per sample."""
    b = x.shape[0]
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None, None], x.flip(-1), x)
    limits = [max(1, s // 16) for s in x.shape[2:]]
    out = torch.empty_like(x)
    for i in range(b):
        shifts = [int(torch.randint(-m, m + 1, (1,), generator=gen)) for m in limits]
        out[i] = torch.roll(x[i], shifts, dims=(1, 2, 3))
    scale = 1 + 0.1 * (torch.rand(b, 1, 1, 1, 1, generator=gen) - 0.5)
    offset = 0.05 * (torch.rand(b, 1, 1, 1, 1, generator=gen) - 0.5)
    return (out * scale + offset).clamp(0, 1)


def train_classifier(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    steps: int,
    batch_size: int = BATCH_SIZE,
    lr: float = 3e-4,
    seed: int = 0,
    device: str | torch.device = "auto",
    augment: bool = True,
    progress: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``inputs`` (N, 1, D, H, W) in [0, 1] and class ``targets`` (N,) int64.

    Cross-entropy, Adam with a cosine schedule, batches drawn with equal weight per class, mixed precision on CUDA.
    ``progress(step, steps, loss)`` is called after every step; ``should_stop()`` is checked after every step and
    raises :class:`Cancelled` (the caller discards the model: nothing half-trained is saved here).
    """
    if len(inputs) == 0 or len(inputs) != len(targets):
        raise ValueError("need the same, non-zero number of inputs and targets")
    if steps < 1:
        raise ValueError("steps must be at least 1")
    targets = torch.as_tensor(targets, dtype=torch.long)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dev = resolve_device(device)
    model.to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
    sched = cosine_schedule(opt, steps)
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda")
    counts = torch.bincount(targets).float()
    weights = 1.0 / counts[targets]
    result, start = TrainResult(), time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.multinomial(weights, batch_size, replacement=True, generator=gen)
        x, y = inputs[idx], targets[idx]
        if augment:
            x = _augment(x, gen)
        with autocast(dev):
            loss = F.cross_entropy(model(x.to(dev)).float(), y.to(dev))
        optimiser_step(loss, opt, scaler)
        sched.step()
        record_step(result, step, steps, loss.item(), progress, should_stop)
    result.seconds = time.perf_counter() - start
    model.eval()
    return result


def new_model(card: ModelCard, seed: int = 0) -> nn.Module:
    """The card's network with a seeded random initialisation."""
    torch.manual_seed(seed)
    config = {k: v for k, v in card.config.items() if k != "num_classes"}
    return build_model(card.architecture, num_classes=card.num_classes, **config)


def predict(model: nn.Module, x: torch.Tensor, device: str | torch.device = "auto") -> list[float]:
    """Class probabilities of one prepared input ``(1, D, H, W)`` (the classify path without the CAM)."""
    dev = resolve_device(device)
    model.to(dev).eval()
    with torch.inference_mode(), autocast(dev):
        logits = model(x[None].to(dev))
    return torch.softmax(logits.float(), dim=1)[0].cpu().tolist()


def leave_one_out(
    items: Sequence[Example],
    card: ModelCard,
    *,
    steps: int,
    seed: int = 0,
    device: str | torch.device = "auto",
    lr: float = 3e-4,
    progress: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[dict[str, Any]]:
    """For each volume, train a fresh model on all the others and predict the held-out one.

    Returns one row per volume: ``{"file", "true", "predicted", "probabilities": {class: p}}``. ``progress`` gets
    ``(step, total, loss)`` counted over all folds. With a handful of volumes this checks that the pipeline runs
    end to end; it is not an accuracy estimate.
    """
    if len(items) < 2:
        raise InputError(f"leave-one-out needs at least 2 volumes, got {len(items)}")
    names = card.class_names
    rows = []
    for k, held in enumerate(items):
        train = [e for i, e in enumerate(items) if i != k]
        model = new_model(card, seed)
        fold_progress = None
        if progress is not None:

            def fold_progress(step: int, _steps: int, loss: float, k: int = k) -> None:
                progress(k * steps + step, len(items) * steps, loss)

        train_classifier(
            model,
            torch.stack([e.x for e in train]),
            torch.tensor([e.target for e in train]),
            steps=steps,
            lr=lr,
            seed=seed,
            device=device,
            progress=fold_progress,
            should_stop=should_stop,
        )
        probs = predict(model, held.x, device)
        rows.append(
            {
                "file": Path(held.file).name,
                "true": names[held.target],
                "predicted": names[max(range(len(probs)), key=probs.__getitem__)],
                "probabilities": {n: round(p, 4) for n, p in zip(names, probs)},
            }
        )
    return rows


def loo_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Card metrics for a :func:`leave_one_out` result, with the protocol saying what it is (and is not)."""
    n = len(rows)
    correct = sum(r["true"] == r["predicted"] for r in rows)
    return {
        "protocol": LOO_PROTOCOL.format(n=n) + f"; each volume predicted by a model trained from scratch on the other "
        f"{n - 1} with the same settings",
        "values": {"correct": correct, "total": n, "per_volume": list(rows)},
    }


def format_loo_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`leave_one_out` rows, with a last line counting the correct predictions."""
    names = list(rows[0]["probabilities"]) if rows else list(DIAGNOSIS_CLASSES)
    head = ["file", "true", "predicted", *[f"P({n})" for n in names]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["file"], r["true"], r["predicted"], *[f"{r['probabilities'][n]:.3f}" for n in names]]
        lines.append("| " + " | ".join(cells) + " |")
    correct = sum(r["true"] == r["predicted"] for r in rows)
    lines.append(f"\n{correct}/{len(rows)} held-out volumes predicted correctly ({LOO_PROTOCOL.format(n=len(rows))}).")
    return "\n".join(lines)


def classifier_card(
    name: str,
    size: Sequence[int],
    base_width: int,
    training: dict[str, Any],
    metrics: dict[str, Any],
    notes: str,
    intensity: dict[str, Any] | None = None,
    architecture: str = ARCHITECTURE,
) -> ModelCard:
    """Model card of a 3-class (COVID-19 / common pneumonia / normal) volume classifier."""
    return ModelCard(
        name=name,
        architecture=architecture,
        config={"base_width": int(base_width), "num_classes": len(DIAGNOSIS_CLASSES)},
        task="classification",
        classes=[{"id": i, "name": n, "colour": list(DIAGNOSIS_COLOURS[i])} for i, n in enumerate(DIAGNOSIS_CLASSES)],
        input_size=[int(s) for s in size],
        intensity=intensity
        or {
            "hu_window": list(LUNG_WINDOW),
            "display_window": [0, 255],
            "note": "lung window -1350..150 HU scaled to 0..1; display images 0..255 scaled to 0..1",
        },
        training=dict(training),
        metrics=dict(metrics),
        notes=notes,
    )


def parse_size(text: str) -> tuple[int, int, int]:
    """``"32,96,96"`` -> (32, 96, 96); InputError unless three integers in 1..1024."""
    try:
        size = tuple(int(v) for v in text.split(","))
    except ValueError:
        size = ()
    if len(size) != 3 or not all(1 <= v <= 1024 for v in size):
        raise InputError(f"--size must be three integers D,H,W in 1..1024, got {text!r}")
    return size  # type: ignore[return-value]


def _every(steps: int, log: Report | None, prefix: str) -> Callable[[int, int, float], None] | None:
    if log is None:
        return None
    interval = max(1, steps // 10)

    def report(step: int, total: int, loss: float) -> None:
        if step % interval == 0 or step == total:
            log(f"{prefix}: step {step}/{total} loss {loss:.4f}")

    return report


@dataclass
class ClassifierRun:
    """What :func:`run_train_classifier` did: a JSON-able summary and the leave-one-out rows (empty without LOO)."""

    summary: dict[str, Any]
    loo_rows: list[dict[str, Any]] = field(default_factory=list)


def run_train_classifier(
    data: Sequence[str | Path],
    name: str,
    *,
    steps: int = 200,
    size: Sequence[int] = DEFAULT_SIZE,
    width: int = DEFAULT_WIDTH,
    lr: float = 3e-4,
    seed: int = 0,
    device: str = "auto",
    out_dir: str | Path | None = None,
    loo: bool = False,
    notes: str | None = None,
    overwrite: bool = False,
    log: Report | None = None,
) -> ClassifierRun:
    """Train a classifier on every volume under ``data`` and save it as ``out_dir/NAME`` (``covidseg
    train-classifier``).

    Everything that can be checked before training is checked first (name free, arguments, device, data), so bad
    input fails in a second with one :class:`InputError` line. With ``loo`` a leave-one-out run comes first and its
    result goes into the card's metrics. Nothing is written unless training finishes.
    """
    folder = Path(out_dir) if out_dir is not None else user_models_dir()
    check_new_model_name(name, folder, overwrite=overwrite)
    if steps < 1 or width < 1 or not lr > 0:
        raise InputError("--steps and --width must be at least 1 and --lr positive")
    dev = resolve_device(device)
    found = find_volumes(data)
    counts = Counter(DIAGNOSIS_CLASSES[c] for _, c in sorted(found, key=lambda f: f[1]))
    if len(counts) < 2:
        raise InputError(f"all {len(found)} volume(s) are {next(iter(counts))!r}; need at least two classes")
    if loo and len(found) < 2:
        raise InputError("--loo needs at least 2 volumes")
    start = time.perf_counter()
    size = tuple(int(s) for s in size)
    training = {
        "data": f"{len(found)} volumes ({', '.join(f'{n} {k}' for k, n in counts.items())})",
        "files": [p.name for p, _ in found],
        "protocol": f"{steps} steps, batch {BATCH_SIZE}, Adam lr {lr} cosine, cross-entropy, class-balanced "
        "sampling, left-right flip / shift / intensity jitter",
        "command": "covidseg train-classifier",
        "date": dt.date.today().isoformat(),
        "seed": seed,
    }
    if notes is None:
        notes = (
            f"trained with `covidseg train-classifier` on {len(found)} volumes; not validated, do not use for diagnosis"
        )
    card = classifier_card(name, size, width, training, {}, notes)
    examples = load_examples(found, card, log)
    rows: list[dict[str, Any]] = []
    if loo:
        rows = leave_one_out(
            examples,
            card,
            steps=steps,
            seed=seed,
            device=dev,
            lr=lr,
            progress=_every(steps * len(examples), log, "LOO"),
        )
        card.metrics = loo_metrics(rows)
    model = new_model(card, seed)
    history = train_classifier(
        model,
        torch.stack([e.x for e in examples]),
        torch.tensor([e.target for e in examples]),
        steps=steps,
        lr=lr,
        seed=seed,
        device=dev,
        progress=_every(steps, log, "train"),
    )
    card.training["final_loss"] = round(sum(history.losses[-10:]) / len(history.losses[-10:]), 4)
    card.training["seconds"] = round(history.seconds, 1)
    card.training["device"] = str(dev)
    ckpt = save_checkpoint(model.cpu(), card, folder, overwrite=overwrite)
    summary: dict[str, Any] = {
        "model": name,
        "weights": str(ckpt.weights),
        "card": str(ckpt.weights.with_suffix(".json")),
        "volumes": dict(counts),
        "steps": steps,
        "input_size": list(size),
        "final_loss": card.training["final_loss"],
        "device": str(dev),
        "seconds": round(time.perf_counter() - start, 1),
    }
    if rows:
        summary["leave_one_out"] = {
            "correct": card.metrics["values"]["correct"],
            "total": len(rows),
            "note": LOO_PROTOCOL.format(n=len(rows)),
        }
    return ClassifierRun(summary, rows)
