"""`ModelCard`: the JSON description stored beside every checkpoint.

A card says what the network is (architecture + config), what it outputs (classes with names and colours), how
its input must be prepared (input size, intensity window), what it was trained on and how it was measured, and the
sha256 of its weights file. Loading validates every field before any weight is read.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from napari_covidseg.errors import CheckpointError

CARD_VERSION = 1
REQUIRED_FIELDS = ("name", "architecture", "config", "task", "classes", "input_size", "intensity")
MAX_CARD_BYTES = 1024 * 1024  # a card is a few kB
MAX_CLASSES = 32


@dataclass
class ModelCard:
    """Description of one trained model.

    Attributes:
        name: model name as shown to users (``"unet"``, ``"unet-ft-2026-11-22-1"``).
        architecture: registry key of the network (``napari_covidseg.models.registry``).
        config: keyword arguments the network is built with (widths, switches, ``num_classes``).
        task: ``"segmentation"`` or ``"classification"``.
        classes: one dict per output channel, in order: ``{"id": int, "name": str, "colour": [r, g, b, a]}``.
        input_size: network input, (H, W) for 2D segmentation or (D, H, W) for 3D classification, in voxels.
        intensity: ``{"hu_window": [lo, hi]}`` — HU are clipped to the window and scaled to 0..1 —, and
            ``{"display_window": [lo, hi]}`` for 8-bit display images; optional ``"note"`` on how it was found.
        training: data used, protocol, seed, steps, date, parent model for fine-tunes.
        metrics: ``{"protocol": "...", "values": {...}}``; empty when the model was never measured.
        version: model version string.
        sha256: hex digest of the weights file.
        notes: anything a user must know (e.g. "trained on synthetic data only").
    """

    name: str
    architecture: str
    config: dict[str, Any]
    task: str
    classes: list[dict[str, Any]]
    input_size: list[int]
    intensity: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    version: str = "0.1.0"
    sha256: str = ""
    notes: str = ""
    card_version: int = CARD_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.classes]

    def summary(self) -> str:
        """One line for listings: task, classes, input size, training data."""
        data = self.training.get("data", "unknown data")
        return (
            f"{self.task}, classes: {', '.join(self.class_names)}; input {'x'.join(map(str, self.input_size))}; "
            f"trained on {data}"
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, source: str = "model card") -> ModelCard:
        """Build and validate a card; any problem raises :class:`CheckpointError` naming the field."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{source}: expected a JSON object")
        known = {f.name for f in fields(cls)}
        missing = [n for n in REQUIRED_FIELDS if n not in data]
        if missing:
            raise CheckpointError(f"{source}: missing field(s) {', '.join(missing)}")
        card = cls(**{k: v for k, v in data.items() if k in known})
        card.validate(source)
        return card

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        from napari_covidseg.jsonio import JSONFileError, read_json

        path = Path(path)
        try:
            data = read_json(path, max_bytes=MAX_CARD_BYTES)
        except JSONFileError as exc:
            raise CheckpointError(f"{path}: model card {exc}") from None
        return cls.from_dict(data, str(path))

    def validate(self, source: str = "model card") -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise CheckpointError(f"{source}: {what}")

        need(isinstance(self.name, str) and self.name.strip() != "", "'name' must be a non-empty string")
        need(isinstance(self.architecture, str), "'architecture' must be a string")
        need(isinstance(self.config, dict), "'config' must be an object")
        need(self.task in ("segmentation", "classification"), "'task' must be segmentation or classification")
        need(
            isinstance(self.card_version, int) and self.card_version <= CARD_VERSION,
            f"card_version {self.card_version!r} is newer than this napari-covidseg understands",
        )
        need(
            isinstance(self.classes, list) and 2 <= len(self.classes) <= MAX_CLASSES,
            f"'classes' must list 2 to {MAX_CLASSES} classes",
        )
        for i, c in enumerate(self.classes):
            need(
                isinstance(c, dict) and c.get("id") == i and isinstance(c.get("name"), str),
                f"class {i} must be {{'id': {i}, 'name': str, 'colour': [r, g, b, a]}}",
            )
            colour = c.get("colour")
            need(
                isinstance(colour, list)
                and len(colour) == 4
                and all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in colour),
                f"class {i} colour must be 4 numbers in 0..1",
            )
        dims = 2 if self.task == "segmentation" else 3
        need(
            isinstance(self.input_size, list)
            and len(self.input_size) == dims
            and all(isinstance(v, int) and 1 <= v <= 4096 for v in self.input_size),
            f"'input_size' must be {dims} integers in 1..4096",
        )
        need(isinstance(self.intensity, dict), "'intensity' must be an object")
        for key in ("hu_window", "display_window"):
            win = self.intensity.get(key)
            need(
                isinstance(win, list)
                and len(win) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in win)
                and win[0] < win[1],
                f"intensity.{key} must be two finite numbers [low, high] with low < high",
            )
        need(isinstance(self.training, dict) and isinstance(self.metrics, dict), "'training'/'metrics' must be objects")
        num = self.config.get("num_classes")
        need(num is None or num == len(self.classes), f"config.num_classes={num} but {len(self.classes)} classes")
        from napari_covidseg.models.schema import check_config

        check_config(self.architecture, self.config, self.task, tuple(self.input_size), self.num_classes, source)
