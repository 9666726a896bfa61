"""Segment dock: lesion labels for the chosen CT with the chosen model, in a background thread."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import QCheckBox, QLabel, QSpinBox

from napari_covidseg._widgets._common import (
    ModelPicker,
    add_lesion_labels,
    add_lung_labels,
    fill_volume_table,
    framing_of,
    lungs_checkbox,
    new_table,
    same_layer,
)
from napari_covidseg._widgets._dock import ImageJobDock
from napari_covidseg._widgets._navigate import LesionNavigator
from napari_covidseg._widgets._session import remember_lungs
from napari_covidseg.analysis.slices import lesion_voxels_per_slice
from napari_covidseg.inference.segment import DEFAULT_BATCH_SIZE, Segmentation, iter_segment, summary_sentences
from napari_covidseg.layers import LESIONS

if TYPE_CHECKING:
    import napari


class SegmentWidget(ImageJobDock):
    """Pick a CT layer, a model and a device; Segment adds ``<image> lesions (<model>)`` and lists volumes in ml:
    inside the lungs, outside them (only when "only inside the lungs" is off) and the % of each lung involved."""

    RUN_TEXT = "Segment"

    def __init__(self, napari_viewer: napari.Viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.model = ModelPicker("segmentation", default="unet", follow_new=True)
        self.batch = QSpinBox()
        self.batch.setRange(1, 64)
        self.batch.setValue(DEFAULT_BATCH_SIZE)
        self.batch.setToolTip("Slices per forward pass: lower it if memory runs out")
        self.lungs_only = lungs_checkbox()
        self.show_lungs = QCheckBox("add the lung mask as a layer")
        self.show_lungs.setToolTip("Outlines of the lung mask the lesions were kept in (1 right, 2 left lung)")
        self.table = new_table()
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.navigator = LesionNavigator(napari_viewer)
        fields = {"image": self.image, "model": self.model, "device": self.device, "slices per batch": self.batch}
        fields |= {"lungs": self.lungs_only, "": self.show_lungs}
        self.lay_out(fields, [QLabel("Lesion volume (ml)"), self.table, self.summary, self.navigator])
        self.last_result: Segmentation | None = None

    def prepare(self, layer, volume):
        checkpoint = self.model.checkpoint()
        device, batch, framing = self.device.currentText(), self.batch.value(), framing_of(self.lungs_only)

        def job():
            seg = yield from iter_segment(volume, checkpoint, device=device, batch_size=batch, framing=framing)
            # counted here, in the worker, not in the GUI thread
            return seg, seg.summary(volume.spacing), lesion_voxels_per_slice(seg.labels)

        return job, f"Segmenting {layer.name} with {checkpoint.name}"

    def show_result(self, result: tuple[Segmentation, dict, object], volume, like: dict, image_name: str) -> None:
        seg, summary, counts = result
        classes = {c["id"]: c["name"] for c in seg.card.classes}
        name = f"{image_name} lesions ({seg.card.name})"
        extra = {"model": seg.card.name, "device": seg.device, "framing": seg.framing}
        layer = same_layer(self.viewer, name, seg.labels[0] if volume.meta.get("squeezed") else seg.labels, LESIONS)
        if layer is None:
            layer = add_lesion_labels(self.viewer, seg.labels, volume, like, name, classes, extra, image=image_name)
        layer.visible = True
        source = self.viewer.layers[image_name] if image_name in self.viewer.layers else None
        if seg.lungs is not None and source is not None:
            remember_lungs(layer, source.data, seg.lungs)  # the Quantify dock need not compute it again
        if self.show_lungs.isChecked() and seg.lungs is not None:
            add_lung_labels(self.viewer, seg.lungs, volume, like, f"{image_name} lungs")
            self.viewer.layers.selection.active = self.viewer.layers[name]  # the lesions stay the layer to edit
        columns = {"ml": summary["volume_ml"]}
        if summary["inside_lungs_ml"] is not None:
            columns = {"inside lungs (ml)": summary["inside_lungs_ml"]}
            if any(v > 0 for v in summary["outside_lungs_ml"].values()) or seg.framing == "whole":
                columns["outside lungs (ml)"] = summary["outside_lungs_ml"]
        fill_volume_table(self.table, classes, columns)
        self.summary.setText(summary_text(summary))
        self.last_result = seg
        self.navigator.set_layer(layer, counts)
        self.navigator.go_to_most(recount=False)  # the view moves to the result's slice with the most lesion
        self.runner.set_status(f"{name}: {seg.labels.shape[0]} slices in {seg.seconds:.1f} s on {seg.device}")


def summary_text(summary: dict) -> str:
    """The dock's plain-language line under the table: % of lung involved, what lies outside, and the notes."""
    inside, outside = summary_sentences(summary)
    parts = [f"<b>{inside}</b>"] + ([f"<b>{outside}</b>"] if outside else [])
    parts += [f"<small>{note}</small>" for note in summary["notes"]]
    return "<br>".join(parts)
