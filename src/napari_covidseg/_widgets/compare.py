"""Compare dock: two segmentation models on one CT, side by side, with a disagreement map and Dice between them."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Labels
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QCheckBox,
    QLabel,
    QTableWidgetItem,
)

from napari_covidseg._widgets._common import (
    LayerPicker,
    ModelPicker,
    add_lesion_labels,
    fit_table_height,
    framing_of,
    is_lesion_labels,
    lungs_checkbox,
    new_table,
)
from napari_covidseg._widgets._dock import ImageJobDock
from napari_covidseg.analysis.compare import (
    DISAGREEMENT_NAMES,
    ONLY_A,
    ONLY_B,
    OTHER_CLASS,
    iter_compare,
)
from napari_covidseg.constants import LESION_CLASSES, LESION_COLOURS
from napari_covidseg.errors import InputError
from napari_covidseg.layers import DISAGREEMENT, GEOMETRY_KEY, ROLE_KEY, SOURCE_KEY

if TYPE_CHECKING:
    import napari

DISAGREEMENT_COLOURS: dict[int | None, tuple[float, float, float, float]] = {
    None: (0.0, 0.0, 0.0, 0.0),
    0: (0.0, 0.0, 0.0, 0.0),
    ONLY_A: (1.0, 0.0, 1.0, 1.0),  # magenta
    ONLY_B: (0.0, 1.0, 1.0, 1.0),  # cyan
    OTHER_CLASS: (1.0, 1.0, 1.0, 1.0),  # white
}


def _header(key: str, name_a: str, name_b: str) -> str:
    """Table header of a row key: ``dice A vs reference`` -> ``Dice unet vs ref``."""
    words = {"A": name_a, "B": name_b, "dice": "Dice\n", "reference": "ref", "volume": ""}
    return " ".join(filter(None, (words.get(w, w) for w in key.split()))).replace("\n ", "\n")


def _cell(key: str, value) -> str:
    if isinstance(value, str):
        return value
    if value is None or np.isnan(value):
        return "\u2013"  # en dash
    return f"{value:.3f}" if key.startswith("dice") else f"{value:.2f}"


class CompareWidget(ImageJobDock):
    """Pick a CT, models A and B, optionally reference labels; Compare adds both results and where they disagree."""

    RUN_TEXT = "Compare"

    def __init__(self, napari_viewer: napari.Viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.model_a = ModelPicker("segmentation", default="unet")
        self.model_b = ModelPicker("segmentation", default="resattunet", follow_new=True)
        self.reference = LayerPicker(
            napari_viewer, Labels, allow_none=True, accept=is_lesion_labels, prefer=lambda layers: None
        )
        self.reference.setToolTip("Optional ground truth with the CT's shape: adds Dice of each model against it")
        self.grid = QCheckBox("grid view")
        self.grid.setToolTip("napari's grid mode: one panel per layer, cameras linked (the CT in its own panel)")
        self.grid.setChecked(bool(napari_viewer.grid.enabled))
        self.grid.toggled.connect(self._set_grid)
        napari_viewer.grid.events.enabled.connect(self._sync_grid)  # napari's own grid button moves the checkbox
        self.destroyed.connect(lambda *_: napari_viewer.grid.events.enabled.disconnect(self._sync_grid))
        self.table = new_table()
        self.lungs_only = lungs_checkbox()
        fields = {"image": self.image, "model A": self.model_a, "model B": self.model_b}
        fields |= {"reference": self.reference, "device": self.device, "lungs": self.lungs_only}
        self.lay_out(fields, [self.grid, QLabel("Lesion volume (ml) and agreement (Dice)"), self.table])
        self.last_rows: list[dict] = []

    def _set_grid(self, on: bool) -> None:
        self.viewer.grid.enabled = bool(on)

    def _sync_grid(self, *_) -> None:
        try:
            self.grid.blockSignals(True)
            self.grid.setChecked(bool(self.viewer.grid.enabled))
            self.grid.blockSignals(False)
        except RuntimeError:  # the dock's C++ side is already gone
            pass

    def prepare(self, layer, volume):
        """Both models in one background job; refuses twice the same model or a reference of another shape."""
        ckpt_a, ckpt_b = self.model_a.checkpoint(), self.model_b.checkpoint()
        if ckpt_a.name == ckpt_b.name:
            raise InputError(f"models A and B are both {ckpt_a.name!r}; choose two different models")
        ref = self._reference_data(layer)
        voxel_ml = float(np.prod(volume.spacing)) / 1000.0
        framing = framing_of(self.lungs_only)
        job = partial(iter_compare, volume, (ckpt_a, ckpt_b), self.device.currentText(), ref, voxel_ml, framing)
        return job, f"Comparing {ckpt_a.name} and {ckpt_b.name} on {layer.name}"

    def _reference_data(self, image) -> np.ndarray | None:
        """The chosen reference labels as an integer array of the CT layer's shape, or None."""
        ref = self.reference.layer()
        if ref is None:
            return None
        data = np.array(ref.data)  # a snapshot: edits made while the job runs do not change its Dice
        if data.shape != tuple(np.shape(image.data)):
            raise InputError(
                f"reference {ref.name!r} has shape {data.shape} but {image.name!r} has {tuple(np.shape(image.data))}; "
                "choose labels drawn on this CT or (none)"
            )
        if not (np.issubdtype(data.dtype, np.integer) or data.dtype == bool) or (data.size and data.min() < 0):
            raise InputError(f"reference {ref.name!r} must hold non-negative integer labels")
        return data

    def show_result(self, result, volume, like: dict, image_name: str) -> None:
        """GUI thread: add both lesion layers and the disagreement layer, fill the table, switch to the grid."""
        seg_a, seg_b, diff, rows, differ = result
        name_a, name_b = seg_a.card.name, seg_b.card.name
        for seg in (seg_a, seg_b):
            classes = {c["id"]: c["name"] for c in seg.card.classes}
            extra = {"model": seg.card.name, "device": seg.device}
            add_lesion_labels(
                self.viewer,
                seg.labels,
                volume,
                like,
                f"{image_name} lesions ({seg.card.name})",
                classes,
                extra,
                image=image_name,
            )
        names = {k: v.format(a=name_a, b=name_b) for k, v in DISAGREEMENT_NAMES.items()}
        metadata = {k: v for k, v in like["metadata"].items() if k in (GEOMETRY_KEY, "spacing")}
        metadata |= {"classes": names, "models": [name_a, name_b], ROLE_KEY: DISAGREEMENT, SOURCE_KEY: image_name}
        where = {k: like[k] for k in ("scale", "translate", "rotate", "shear", "affine")}
        features = {"index": list(names), "class": list(names.values())}
        name = f"{image_name} disagreement ({name_a} vs {name_b})"
        self.viewer.add_labels(
            diff, name=name, **where, metadata=metadata, features=features, colormap=dict(DISAGREEMENT_COLOURS)
        )
        self._fill_table(rows, name_a, name_b)
        self.last_rows = rows
        self.grid.setChecked(True)
        self.viewer.grid.enabled = True
        self.viewer.reset_view()  # every panel shows the whole slice
        seconds = seg_a.seconds + seg_b.seconds
        self.runner.set_status(
            f"{name_a} vs {name_b}: {seg_a.labels.shape[0]} slices each in {seconds:.1f} s on {seg_a.device}; "
            f"they disagree on {differ:.2f} ml"
        )

    def _fill_table(self, rows: list[dict], name_a: str, name_b: str) -> None:
        """One row per dict of ``rows``; NaN (class in neither array) shows as an en dash."""
        keys = list(rows[0]) if rows else []
        self.table.clear()
        self.table.setColumnCount(len(keys))
        self.table.setRowCount(len(rows))
        self.table.setHorizontalHeaderLabels([_header(k, name_a, name_b) for k in keys])
        ids = {name: i for i, name in LESION_CLASSES.items()}
        for r, row in enumerate(rows):
            for c, key in enumerate(keys):
                item = QTableWidgetItem(_cell(key, row[key]))
                if c == 0 and row[key] in ids:
                    item.setData(Qt.DecorationRole, QColor.fromRgbF(*LESION_COLOURS[ids[row[key]]]))
                elif c > 0:
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                self.table.setItem(r, c, item)
        self.table.resizeColumnsToContents()
        fit_table_height(self.table)
