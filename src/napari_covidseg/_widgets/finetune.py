"""Fine-tune dock: a short training run on the saved corrections, a live loss curve, a new versioned user model.

The run is the core's ``iter_finetune`` generator (the same loop as ``covidseg train`` and ``covidseg finetune``)
in a worker. The new model is written only when training and its before/after check have finished, then every
model picker rescans and the Segment dock (and the Compare dock's model B) select it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QHBoxLayout, QLabel, QLineEdit, QPushButton, QSpinBox, QWidget

from napari_covidseg._widgets._common import ModelPicker, models
from napari_covidseg._widgets._dock import JobDock, warm_in_background, warm_training_imports
from napari_covidseg._widgets._session import session_for
from napari_covidseg.errors import CheckpointError, InputError
from napari_covidseg.training.finetune import FinetuneResult, FinetuneSettings, iter_finetune, suggest_name

if TYPE_CHECKING:
    import napari

SESSION_SLICES = "slices saved in this session"
WHOLE_FOLDER = "the whole corrections folder"


class LossPlot(QWidget):
    """The training loss per step as a line (drawn with QPainter: no plotting library needed)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.losses: list[float] = []
        self.steps = 0
        self.setMinimumHeight(90)

    def start(self, steps: int) -> None:
        self.losses, self.steps = [], steps
        self.update()

    def add(self, loss: float) -> None:
        self.losses.append(float(loss))
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(38, 41, 48))
        painter.setPen(QColor(150, 150, 150))
        if not self.losses:
            painter.drawText(self.rect(), Qt.AlignCenter, "loss curve")
            return
        lo, hi = min(self.losses), max(self.losses)
        w, h, pad = self.width(), self.height(), 16
        span, n = (hi - lo) or 1.0, max(self.steps, len(self.losses), 2)
        points = [
            QPointF(pad + (w - 2 * pad) * i / (n - 1), pad + (h - 2 * pad) * (hi - v) / span)
            for i, v in enumerate(self.losses)
        ]
        painter.drawText(4, 12, f"loss {hi:.3f}")
        painter.drawText(4, h - 4, f"{lo:.3f}   step {len(self.losses)}/{self.steps}")
        painter.setPen(QPen(QColor(255, 200, 60), 1.5))
        painter.drawPolyline(QPolygonF(points))


class FinetuneWidget(JobDock):
    """Base model, steps, learning rate, which corrections; Start adds a fine-tuned model and selects it."""

    RUN_TEXT = "Start fine-tuning"

    def __init__(self, napari_viewer: napari.Viewer, parent=None):
        super().__init__(napari_viewer, parent)
        warm_in_background(warm_training_imports)  # torch._dynamo, imported by the first optimiser (see _dock.py)
        self.session = session_for(napari_viewer)
        self.base = ModelPicker("segmentation", default="unet")
        self.steps = QSpinBox()
        self.steps.setRange(1, 20000)
        self.steps.setValue(100)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(5)
        self.lr.setRange(1e-5, 1e-2)
        self.lr.setSingleStep(1e-4)
        self.lr.setValue(FinetuneSettings().lr)
        self.scope = QComboBox()
        self.scope.addItems([SESSION_SLICES, WHOLE_FOLDER])
        self.name = QLineEdit()
        self.name.setPlaceholderText("automatic: <base>-ftN")
        self.loss_plot = LossPlot()
        self.result = QLabel("")
        self.result.setWordWrap(True)
        self.trash_button = QPushButton("Move to trash")
        self.trash_button.setToolTip("Remove the chosen base model if it is one of yours (kept in the trash folder)")
        self.trash_button.clicked.connect(self.trash_model)
        self.revert_button = QPushButton("Revert to parent")
        self.revert_button.setToolTip("Trash the chosen fine-tuned model and use the model it was made from")
        self.revert_button.clicked.connect(self.revert_to_parent)
        actions = QWidget()
        row = QHBoxLayout(actions)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.trash_button)
        row.addWidget(self.revert_button)
        fields = {"base model": self.base, "steps": self.steps, "learning rate": self.lr, "train on": self.scope}
        fields |= {"new name": self.name, "device": self.device}
        self.lay_out(fields, [self.loss_plot, self.result, actions])
        self.last_result: FinetuneResult | None = None
        self.base.combo.currentIndexChanged.connect(self._sync_actions)
        self._sync_actions()

    def start_job(self):
        base = self.base.checkpoint()
        folder = self.session.folder
        keys = None
        if self.scope.currentText() == SESSION_SLICES:
            keys = list(self.session.saved_keys)
            if not keys:
                raise InputError("no corrections saved in this session yet: save some in the Correct dock first, or "
                                 f"train on {WHOLE_FOLDER}")  # fmt: skip
        name = self.name.text().strip() or suggest_name(base.name)
        settings = FinetuneSettings(steps=self.steps.value(), lr=self.lr.value())
        device = self.device.currentText()
        self.loss_plot.start(settings.steps)

        def job():
            return (yield from iter_finetune(base, folder, name, settings, keys=keys, device=device))

        return job, f"Fine-tuning {base.name} into {name}", self._show, None

    def on_progress(self, update) -> None:
        if getattr(update, "loss", None) is not None:
            self.loss_plot.add(update.loss)

    def _show(self, result: FinetuneResult) -> None:
        self.last_result = result
        name = result.checkpoint.name
        models.changed.emit()
        models.created.emit(name)
        lines = [f"<b>{name}</b> saved ({len(result.train_keys)} slices, {result.seconds:.0f} s)."]
        for key in result.after:
            before = result.before.get(key)
            text = f"{before:.3f} \u2192 {result.after[key]:.3f}" if before is not None else f"{result.after[key]:.3f}"
            lines.append(f"{key.replace('dice ', 'Dice ')}: {text}")
        lines.append(f"<i>measured on {result.evaluated_on}</i>")
        self.result.setText("<br>".join(lines))
        self.name.clear()
        self.runner.set_status(f"{name} is ready and selected in the Segment dock")

    # --- model housekeeping ---
    def _sync_actions(self, *_) -> None:
        try:
            ckpt = self.base.checkpoint()
        except InputError:  # also CheckpointError; the list is empty while it refreshes
            ckpt = None
        mine = ckpt is not None and not ckpt.bundled
        self.trash_button.setEnabled(mine)
        self.revert_button.setEnabled(mine and bool(ckpt.card.training.get("parent")))

    def trash_model(self) -> str | None:
        """Move the chosen user model to the trash folder (recoverable); returns its name."""
        from napari_covidseg.training.finetune import trash_user_model

        try:
            ckpt = self.base.checkpoint()
            folder = trash_user_model(ckpt.name)
        except (InputError, CheckpointError, OSError) as exc:
            self.runner.refuse(exc)
            return None
        models.changed.emit()
        self.runner.set_status(f"{ckpt.name} moved to {folder}")
        return ckpt.name

    def revert_to_parent(self) -> None:
        """Trash the chosen fine-tuned model and select its parent everywhere."""
        try:
            parent = self.base.checkpoint().card.training.get("parent")
        except CheckpointError as exc:
            self.runner.refuse(exc)
            return
        if self.trash_model() is not None and parent:
            models.created.emit(parent)
            self.base.select(parent)
            self.runner.set_status(f"reverted to {parent}; the fine-tuned model is in the trash folder")
