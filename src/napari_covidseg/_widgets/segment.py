"""Segment dock: lesion labels for the chosen CT with the chosen model, in a background thread."""

from __future__ import annotations

from typing import TYPE_CHECKING

from napari.layers import Image
from qtpy.QtWidgets import QFormLayout, QLabel, QProgressBar, QPushButton, QSizePolicy, QSpinBox, QVBoxLayout, QWidget

from napari_covidseg._widgets._common import (
    LayerPicker,
    ModelPicker,
    add_lesion_labels,
    device_combo,
    fill_volume_table,
    layer_volume,
    new_table,
    placement,
)
from napari_covidseg._widgets._workers import JobRunner
from napari_covidseg.errors import CheckpointError, InputError
from napari_covidseg.inference.segment import Segmentation, iter_segment

if TYPE_CHECKING:
    import napari


class SegmentWidget(QWidget):
    """Pick a CT layer, a model and a device; Run adds ``<image> lesions (<model>)`` and lists volumes in ml."""

    def __init__(self, napari_viewer: napari.Viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.image = LayerPicker(napari_viewer, Image)
        self.model = ModelPicker("segmentation", default="unet")
        self.device = device_combo()
        self.batch = QSpinBox()
        self.batch.setRange(1, 64)
        self.batch.setValue(8)
        self.batch.setToolTip("Slices per forward pass: lower it if memory runs out")
        self.run_button = QPushButton("Segment")
        self.run_button.clicked.connect(self._run_or_cancel)
        self.bar = QProgressBar()
        self.bar.setVisible(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.table = new_table()

        form = QFormLayout()
        form.addRow("image", self.image)
        form.addRow("model", self.model)
        form.addRow("device", self.device)
        form.addRow("slices per batch", self.batch)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.run_button)
        layout.addWidget(self.bar)
        layout.addWidget(self.status)
        layout.addWidget(QLabel("Lesion volume (ml)"))
        layout.addWidget(self.table)
        self.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Maximum)  # share the dock area, never squeeze
        self.runner = JobRunner(self, napari_viewer, self.run_button, self.bar, self.status)
        self.last_result: Segmentation | None = None

    def reset_choices(self, *_) -> None:
        self.image.reset_choices()

    def _run_or_cancel(self) -> None:
        if self.runner.running:
            self.runner.cancel()
        else:
            self.run()

    def run(self) -> None:
        """Start segmenting (messages instead of exceptions for bad input)."""
        try:
            layer = self.image.layer()
            volume = layer_volume(layer)
            checkpoint = self.model.checkpoint()
        except (InputError, CheckpointError) as exc:
            self.runner.refuse(exc)
            return
        like = placement(layer)
        device, batch = self.device.currentText(), self.batch.value()

        def job():
            return (yield from iter_segment(volume, checkpoint, device=device, batch_size=batch))

        self.runner.start(
            job,
            description=f"Segmenting {layer.name} with {checkpoint.name}",
            on_result=lambda seg: self._show(seg, volume, like, layer.name),
            source=layer,
        )

    def _show(self, seg: Segmentation, volume, like: dict, image_name: str) -> None:
        classes = {c["id"]: c["name"] for c in seg.card.classes}
        name = f"{image_name} lesions ({seg.card.name})"
        add_lesion_labels(
            self.viewer, seg.labels, volume, like, name, classes, {"model": seg.card.name, "device": seg.device}
        )
        volumes = seg.volumes_ml(volume.spacing)
        fill_volume_table(self.table, classes, {"ml": volumes})
        self.last_result = seg
        self.runner.set_status(f"{name}: {seg.labels.shape[0]} slices in {seg.seconds:.1f} s on {seg.device}")
