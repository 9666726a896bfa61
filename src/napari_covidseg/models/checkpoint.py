"""Checkpoints: safetensors weights + a JSON :class:`ModelCard`; where bundled and user models live.

Nothing here unpickles: weights are read with ``safetensors`` only, and the card is validated before the weights are
touched. A checkpoint is the pair ``NAME.safetensors`` + ``NAME.json`` in one folder.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from napari_covidseg.errors import CheckpointError
from napari_covidseg.io.writers import default_file_mode, temp_path_beside, write_text_atomic
from napari_covidseg.models.card import ModelCard
from napari_covidseg.models.registry import get_architecture
from napari_covidseg.paths import data_home

BUNDLED_DIR = Path(__file__).resolve().parents[1] / "weights"


def user_models_dir() -> Path:
    """Folder for fine-tuned / user models: ``models/`` in :func:`napari_covidseg.paths.data_home`."""
    return data_home() / "models"


@dataclass(frozen=True)
class Checkpoint:
    """A model card and the weights file it describes."""

    card: ModelCard
    weights: Path
    bundled: bool = False

    @property
    def name(self) -> str:
        return self.card.name


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(model: nn.Module, card: ModelCard, folder: str | Path, *, overwrite: bool = False) -> Checkpoint:
    """Write ``folder/NAME.safetensors`` and ``folder/NAME.json`` (sha256 filled in), each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights, card_path = folder / f"{card.name}.safetensors", folder / f"{card.name}.json"
    if not overwrite and (weights.exists() or card_path.exists()):
        raise CheckpointError(f"{weights}: a model named {card.name!r} already exists; choose another name")
    card.validate(card.name)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:  # a diverged run: such a model segments everything as background and looks fine
        raise CheckpointError(f"{card.name}: not saved, {len(bad)} weight tensor(s) hold NaN or infinite values")
    tmp = temp_path_beside(weights)
    try:
        save_file(tensors, str(tmp), metadata={"name": card.name, "architecture": card.architecture})
        os.chmod(tmp, default_file_mode())  # safetensors creates the file itself, owner-only
        card.sha256 = sha256_of(tmp)
        os.replace(tmp, weights)
    finally:
        tmp.unlink(missing_ok=True)
    write_text_atomic(card_path, card.to_json())  # the card last: weights without a card are never listed
    return Checkpoint(card, weights)


MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")


def check_new_model_name(name: str, folder: str | Path, *, overwrite: bool = False) -> None:
    """Refuse, before any training, a name that is not a plain file name or is taken by an installed model or by
    a file in ``folder`` (``overwrite`` allows the latter, for regenerating bundled weights)."""
    if not MODEL_NAME.fullmatch(name):
        raise CheckpointError(f"model name {name!r}: use letters, digits, '.', '_' or '-' (at most 80)")
    folder = Path(folder)
    if not overwrite and (
        any(c.name == name for c in list_checkpoints())
        or (folder / f"{name}.json").exists()
        or (folder / f"{name}.safetensors").exists()
    ):
        raise CheckpointError(f"a model named {name!r} already exists; choose another name (see `covidseg models`)")


def trash_user_model(name: str) -> Path:
    """Move the user model ``name`` (``NAME.json`` + ``NAME.safetensors``) to ``user_models_dir()/trash/NAME-STAMP/``.

    Nothing is deleted: moving the two files back restores the model. Bundled models and unknown names raise
    :class:`CheckpointError`. Returns the trash folder the files are now in.
    """
    if not MODEL_NAME.fullmatch(name):
        raise CheckpointError(f"model name {name!r}: not a model name")
    if (BUNDLED_DIR / f"{name}.json").exists() or (BUNDLED_DIR / f"{name}.safetensors").exists():
        raise CheckpointError(f"{name!r} is a bundled model; it cannot be removed")
    folder = user_models_dir()
    files = [p for p in (folder / f"{name}.json", folder / f"{name}.safetensors") if p.is_file()]
    if not files:
        raise CheckpointError(f"no user model named {name!r} in {folder}")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    trash = folder / "trash" / f"{name}-{stamp}"
    n = 1
    while trash.exists():
        n += 1
        trash = folder / "trash" / f"{name}-{stamp}-{n}"
    trash.mkdir(parents=True)
    for path in files:
        os.replace(path, trash / path.name)
    return trash


def read_checkpoint(path: str | Path, *, bundled: bool = False) -> Checkpoint:
    """Find the card and weights for ``path`` (either file of the pair) and validate the card."""
    path = Path(path)
    if path.suffix not in (".safetensors", ".json"):
        raise CheckpointError(
            f"{path}: a checkpoint is a .safetensors file with a .json model card beside it "
            "(pickled .pt/.pth/.ckpt files are refused: loading them can run code)"
        )
    weights, card_path = path.with_suffix(".safetensors"), path.with_suffix(".json")
    if not weights.exists():
        raise CheckpointError(f"{weights}: weights file not found")
    return Checkpoint(ModelCard.load(card_path), weights, bundled)


def load_model(checkpoint: Checkpoint, *, verify_hash: bool = True) -> nn.Module:
    """Build the card's network and load the weights (safetensors only; shapes must match exactly)."""
    card = checkpoint.card
    if verify_hash and card.sha256 and sha256_of(checkpoint.weights) != card.sha256:
        raise CheckpointError(f"{checkpoint.weights}: sha256 differs from the model card (file changed or corrupt)")
    try:
        arch = get_architecture(card.architecture)
    except KeyError as exc:
        raise CheckpointError(f"{checkpoint.weights}: {exc.args[0]}") from None
    config = {k: v for k, v in card.config.items() if k not in ("num_classes", "in_channels")}
    try:
        model = arch.build(in_channels=int(card.config.get("in_channels", 1)), num_classes=card.num_classes, **config)
    except TypeError as exc:
        raise CheckpointError(f"{checkpoint.weights}: config does not fit {card.architecture}: {exc}") from exc
    try:
        tensors = load_file(str(checkpoint.weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{checkpoint.weights}: not a valid safetensors file ({exc})") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise CheckpointError(f"{checkpoint.weights}: weights do not match {card.architecture} ({detail})")
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(
            f"{checkpoint.weights}: {len(bad)} weight tensor(s) hold NaN or infinite values ({', '.join(bad[:3])}"
            f"{' …' if len(bad) > 3 else ''}): the training that made them diverged; this model cannot be used"
        )
    model.load_state_dict(tensors, strict=True)
    return model.eval()


def list_checkpoints(task: str | None = None, skipped: list[str] | None = None) -> list[Checkpoint]:
    """Bundled checkpoints first, then user models. A card that cannot be used (invalid, unreadable, a folder
    named ``x.json``, weights missing) is skipped, never fatal; ``skipped`` collects one line per such file."""
    found: list[Checkpoint] = []
    for folder, bundled in ((BUNDLED_DIR, True), (user_models_dir(), False)):
        try:
            cards = sorted(folder.glob("*.json")) if folder.is_dir() else []
        except OSError as exc:
            if skipped is not None:
                skipped.append(f"{folder}: cannot be listed ({(exc.strerror or str(exc)).lower()})")
            continue
        for card_path in cards:
            try:
                ckpt = read_checkpoint(card_path, bundled=bundled)
            except (CheckpointError, OSError) as exc:
                if skipped is not None:
                    skipped.append(str(exc) if isinstance(exc, CheckpointError) else f"{card_path}: {exc}")
                continue
            if task is None or ckpt.card.task == task:
                found.append(ckpt)
    return found


def find_checkpoint(name: str) -> Checkpoint:
    """The checkpoint named ``name`` (user models may not shadow bundled ones)."""
    for ckpt in list_checkpoints():
        if ckpt.name == name:
            return ckpt
    if MODEL_NAME.fullmatch(name):  # a card of that name exists but cannot be used: say why
        for folder in (BUNDLED_DIR, user_models_dir()):
            card_path = folder / f"{name}.json"
            if card_path.exists() or card_path.is_symlink():
                read_checkpoint(card_path)  # raises the card's own problem
    names = ", ".join(c.name for c in list_checkpoints()) or "none installed"
    raise CheckpointError(
        f"no trained weights named {name!r} (available: {names}); pass --checkpoint PATH.safetensors to use your own"
    )


@dataclass
class LoadedModel:
    """A network with its card, ready for inference."""

    module: nn.Module
    card: ModelCard
    source: str = ""


def resolve_model(model: str | Path | Checkpoint | LoadedModel, task: str | None = None) -> LoadedModel:
    """Accept a model name, a checkpoint path, a :class:`Checkpoint` or a :class:`LoadedModel`."""
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        if isinstance(model, Checkpoint):
            ckpt = model
        elif isinstance(model, Path) or str(model).endswith((".safetensors", ".json", ".pt", ".pth", ".ckpt", ".bin")):
            ckpt = read_checkpoint(model)
        else:
            ckpt = find_checkpoint(str(model))
        loaded = LoadedModel(load_model(ckpt), ckpt.card, str(ckpt.weights))
    if task is not None and loaded.card.task != task:
        raise CheckpointError(f"{loaded.card.name!r} is a {loaded.card.task} model; a {task} model is needed here")
    return loaded
