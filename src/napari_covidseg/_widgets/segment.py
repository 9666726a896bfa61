"""Segment dock: lesion labels for the chosen CT with the chosen model, in a background thread."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import QLabel, QSpinBox

from napari_covidseg._widgets._common import ModelPicker, add_lesion_labels, fill_volume_table, new_table
from napari_covidseg._widgets._dock import ImageJobDock
from napari_covidseg.inference.segment import DEFAULT_BATCH_SIZE, Segmentation, iter_segment

if TYPE_CHECKING:
    import napari


class SegmentWidget(ImageJobDock):
    """Pick a CT layer, a model and a device; Segment adds ``<image> lesions (<model>)`` and lists volumes in ml."""

    RUN_TEXT = "Segment"

    def __init__(self, napari_viewer: napari.Viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.model = ModelPicker("segmentation", default="unet", follow_new=True)
        self.batch = QSpinBox()
        self.batch.setRange(1, 64)
        self.batch.setValue(DEFAULT_BATCH_SIZE)
        self.batch.setToolTip("Slices per forward pass: lower it if memory runs out")
        self.table = new_table()
        fields = {"image": self.image, "model": self.model, "device": self.device, "slices per batch": self.batch}
        self.lay_out(fields, [QLabel("Lesion volume (ml)"), self.table])
        self.last_result: Segmentation | None = None

    def prepare(self, layer, volume):
        checkpoint = self.model.checkpoint()
        device, batch = self.device.currentText(), self.batch.value()

        def job():
            seg = yield from iter_segment(volume, checkpoint, device=device, batch_size=batch)
            return seg, seg.volumes_ml(volume.spacing)  # counted here, in the worker, not in the GUI thread

        return job, f"Segmenting {layer.name} with {checkpoint.name}"

    def show_result(self, result: tuple[Segmentation, dict[str, float]], volume, like: dict, image_name: str) -> None:
        seg, volumes = result
        classes = {c["id"]: c["name"] for c in seg.card.classes}
        name = f"{image_name} lesions ({seg.card.name})"
        add_lesion_labels(
            self.viewer, seg.labels, volume, like, name, classes, {"model": seg.card.name, "device": seg.device}
        )
        fill_volume_table(self.table, classes, {"ml": volumes})
        self.last_result = seg
        self.runner.set_status(f"{name}: {seg.labels.shape[0]} slices in {seg.seconds:.1f} s on {seg.device}")
