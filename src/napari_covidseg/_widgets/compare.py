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
    QHeaderView,
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
    same_layer,
)
from napari_covidseg._widgets._dock import ImageJobDock
from napari_covidseg._widgets._grid import CompareGrid
from napari_covidseg.analysis.compare import (
    DISAGREEMENT_NAMES,
    ONLY_A,
    ONLY_B,
    OTHER_CLASS,
    iter_compare,
)
from napari_covidseg.analysis.slices import busiest_slice, lesion_voxels_per_slice
from napari_covidseg.constants import LESION_CLASSES, LESION_COLOURS
from napari_covidseg.errors import InputError
from napari_covidseg.layers import DISAGREEMENT, GEOMETRY_KEY, LESIONS, ROLE_KEY, SOURCE_KEY

if TYPE_CHECKING:
    import napari

DISAGREEMENT_COLOURS: dict[int | None, tuple[float, float, float, float]] = {
    None: (0.0, 0.0, 0.0, 0.0),
    0: (0.0, 0.0, 0.0, 0.0),
    ONLY_A: (1.0, 0.0, 1.0, 1.0),  # magenta
    ONLY_B: (0.0, 1.0, 1.0, 1.0),  # cyan
    OTHER_CLASS: (1.0, 1.0, 1.0, 1.0),  # white
}


def _header(key: str) -> str:
    """Compact table header of a row key (the models' names are in the line above the table):
    ``volume A (ml)`` -> ``A\nml``, ``dice A vs B`` -> ``Dice\nA–B``, ``dice A vs reference`` -> ``Dice\nA–ref``."""
    words = key.replace("reference", "ref").split()
    if words[0] == "volume":
        return f"{words[1]}\nml"
    if words[0] == "dice":
        return f"Dice\n{words[1]}\u2013{words[3]}"
    return key


def _dice_colour(value) -> QColor | None:
    """Traffic-light background of a Dice cell, so agreement reads at a glance (none for a missing value)."""
    if not isinstance(value, float) or np.isnan(value):
        return None
    if value >= 0.7:
        return QColor(40, 120, 60)
    return QColor(150, 110, 20) if value >= 0.4 else QColor(150, 40, 40)


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
        self.grid.setToolTip(
            "Side by side: the CT under model A, under model B and under their disagreement, one panel each, "
            "cameras linked; off: one view with the disagreement on top"
        )
        self.grid_view = CompareGrid(napari_viewer)
        self.grid.setChecked(bool(napari_viewer.grid.enabled))
        self.grid.toggled.connect(self._set_grid)
        napari_viewer.grid.events.enabled.connect(self._sync_grid)  # napari's own grid button moves the checkbox
        self.destroyed.connect(lambda *_: napari_viewer.grid.events.enabled.disconnect(self._sync_grid))
        self.table = new_table()
        self.lungs_only = lungs_checkbox()
        fields = {"image": self.image, "model A": self.model_a, "model B": self.model_b}
        fields |= {"reference": self.reference, "device": self.device, "lungs": self.lungs_only}
        self.legend = QLabel("Lesion volume (ml) and agreement (Dice)")
        self.legend.setWordWrap(True)
        self.lay_out(fields, [self.grid, self.legend, self.table])
        self.last_rows: list[dict] = []

    def _set_grid(self, on: bool) -> None:
        if not on:
            self.grid_view.leave()
        elif not self.grid_view.enter():  # no comparison shown yet: napari's plain grid
            self.viewer.grid.enabled = True

    def _sync_grid(self, *_) -> None:
        """napari's own grid button: the comparison's layout follows it, and so does the checkbox."""
        on = bool(self.viewer.grid.enabled)
        if not on and self.grid_view.active:
            self.grid_view.leave()
        elif on and not self.grid_view.active and self.grid_view.ready():
            self.grid_view.enter()
        try:
            self.grid.blockSignals(True)
            self.grid.setChecked(on)
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
        squeeze = bool(volume.meta.get("squeezed"))
        results = []
        for seg in (seg_a, seg_b):
            name = f"{image_name} lesions ({seg.card.name})"
            same = same_layer(self.viewer, name, seg.labels[0] if squeeze else seg.labels, LESIONS)
            if same is None:  # a new result (an equal one, e.g. from Segment, is reused: no "[1]" duplicate)
                classes = {c["id"]: c["name"] for c in seg.card.classes}
                extra = {"model": seg.card.name, "device": seg.device}
                same = add_lesion_labels(self.viewer, seg.labels, volume, like, name, classes, extra, image=image_name)
            results.append(same)
        names = {k: v.format(a=name_a, b=name_b) for k, v in DISAGREEMENT_NAMES.items()}
        name = f"{image_name} disagreement ({name_a} vs {name_b})"
        disagreement = same_layer(self.viewer, name, diff, DISAGREEMENT)
        if disagreement is None:
            metadata = {k: v for k, v in like["metadata"].items() if k in (GEOMETRY_KEY, "spacing")}
            metadata |= {"classes": names, "models": [name_a, name_b], ROLE_KEY: DISAGREEMENT, SOURCE_KEY: image_name}
            where = {k: like[k] for k in ("scale", "translate", "rotate", "shear", "affine")}
            features = {"index": list(names), "class": list(names.values())}
            disagreement = self.viewer.add_labels(
                diff, name=name, **where, metadata=metadata, features=features, colormap=dict(DISAGREEMENT_COLOURS)
            )
        self.legend.setText(
            f"A = <b>{name_a}</b>, B = <b>{name_b}</b>: lesion volume (ml) and agreement (Dice: "
            "<span style='color:#5c5'>\u2265 0.7</span>, <span style='color:#db4'>0.4\u20130.7</span>, "
            "<span style='color:#e66'>&lt; 0.4</span>)"
        )
        self._fill_table(rows)
        self.last_rows = rows
        ct = self.viewer.layers[image_name] if image_name in self.viewer.layers else None
        if ct is not None:
            self.grid_view.set_comparison(ct, [*results, disagreement])
        if self.grid.isChecked():
            self._set_grid(True)
        else:
            self.grid.setChecked(True)  # -> _set_grid: the panels side by side
        if disagreement.ndim == 3:  # the view moves to where the models disagree most (or, if nowhere, lesions are)
            counts = lesion_voxels_per_slice(disagreement.data)
            if not counts.any():
                counts = lesion_voxels_per_slice(results[0].data)
            z = busiest_slice(counts)
            if z is not None:
                self.viewer.dims.set_point(0, disagreement.data_to_world((z, 0, 0))[0])
        seconds = seg_a.seconds + seg_b.seconds
        self.runner.set_status(
            f"{name_a} vs {name_b}: {seg_a.labels.shape[0]} slices each in {seconds:.1f} s on {seg_a.device}; "
            f"they disagree on {differ:.2f} ml"
        )

    def _fill_table(self, rows: list[dict]) -> None:
        """One row per dict of ``rows``; NaN (class in neither array) shows as an en dash; Dice cells coloured."""
        keys = list(rows[0]) if rows else []
        self.table.clear()
        self.table.setColumnCount(len(keys))
        self.table.setRowCount(len(rows))
        self.table.setHorizontalHeaderLabels([_header(k) for k in keys])
        ids = {name: i for i, name in LESION_CLASSES.items()}
        for r, row in enumerate(rows):
            for c, key in enumerate(keys):
                item = QTableWidgetItem(_cell(key, row[key]))
                if c == 0 and row[key] in ids:
                    item.setData(Qt.DecorationRole, QColor.fromRgbF(*LESION_COLOURS[ids[row[key]]]))
                elif c > 0:
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                colour = _dice_colour(row[key]) if key.startswith("dice") else None
                if colour is not None:
                    item.setBackground(colour)
                self.table.setItem(r, c, item)
        header = self.table.horizontalHeader()  # the class column takes what is left: no sideways scrolling
        header.setStretchLastSection(False)
        for c in range(len(keys)):
            header.setSectionResizeMode(c, QHeaderView.Stretch if c == 0 else QHeaderView.ResizeToContents)
        fit_table_height(self.table)
