"""Find the lesions: a row of buttons that moves the viewer to the slice with the most lesion and steps through the
slices that hold any (the Segment and Correct docks)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from napari_covidseg.analysis.slices import busiest_slice, lesion_voxels_per_slice, next_lesion_slice

if TYPE_CHECKING:
    import napari


class LesionNavigator(QWidget):
    """``previous`` / ``most lesion`` / ``next`` for one 3-D Labels layer; the line below says where the view is.

    Lesion voxels per slice are counted when a layer is given (the Segment dock passes the counts its worker made)
    and again before each step, so edits made since count too (one pass over the mask, about 10 ms for 300 x 512²).
    """

    def __init__(self, viewer: napari.Viewer, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.layer = None
        self.counts = np.zeros(0, np.int64)
        self.previous_button = QPushButton("\u25c0 previous")
        self.most_button = QPushButton("most lesion")
        self.next_button = QPushButton("next \u25b6")
        self.previous_button.setToolTip("The nearest slice below this one that holds lesion")
        self.most_button.setToolTip("The slice with the most lesion voxels")
        self.next_button.setToolTip("The nearest slice above this one that holds lesion")
        self.previous_button.clicked.connect(lambda: self.step(-1))
        self.most_button.clicked.connect(lambda: self.go_to_most())  # not the slot: clicked passes checked=False
        self.next_button.clicked.connect(lambda: self.step(1))
        self.where = QLabel("")
        self.where.setWordWrap(True)
        row = QHBoxLayout()
        for button in (self.previous_button, self.most_button, self.next_button):
            row.addWidget(button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.where)
        self.set_layer(None)

    def set_layer(self, layer, counts: np.ndarray | None = None) -> None:
        """Navigate ``layer`` (a 3-D Labels layer; None or 2-D: the buttons are disabled)."""
        self.layer = layer if layer is not None and getattr(layer, "ndim", 0) == 3 else None
        self.counts = np.zeros(0, np.int64)
        if self.layer is not None:
            self.counts = counts if counts is not None else lesion_voxels_per_slice(self.layer.data)
        for button in (self.previous_button, self.most_button, self.next_button):
            button.setEnabled(self.layer is not None)
        self._describe()

    def lesion_slices(self) -> list[int]:
        return [int(z) for z in np.flatnonzero(self.counts > 0)]

    def current_slice(self) -> int | None:
        """The layer's slice under the viewer's current point (data index along z), or None."""
        if self.layer is None:
            return None
        z = float(self.layer.world_to_data(self.viewer.dims.point)[0])
        return int(np.clip(round(z), 0, self.layer.data.shape[0] - 1))

    def go_to(self, z: int) -> None:
        """Move the viewer to slice ``z`` of the layer (its centre, in world coordinates)."""
        if self.layer is None:
            return
        shape = self.layer.data.shape
        world = self.layer.data_to_world([z, (shape[1] - 1) / 2, (shape[2] - 1) / 2])
        axis = self.viewer.dims.ndim - self.layer.ndim  # the layer's z axis among the viewer's dimensions
        self.viewer.dims.set_point(axis, world[0])
        self._describe()

    def go_to_most(self, recount: bool = True) -> None:
        """Go to the slice with the most lesion (``recount=False``: with the counts given to :meth:`set_layer`)."""
        if recount:
            self._recount()
        z = busiest_slice(self.counts)
        if z is None:
            self._describe()
            return
        self.go_to(z)

    def step(self, direction: int) -> None:
        self._recount()
        here = self.current_slice()
        if here is None:
            return
        z = next_lesion_slice(self.counts, here, direction)
        if z is None:
            self._describe(f"no lesion slice {'above' if direction > 0 else 'below'} this one")
            return
        self.go_to(z)

    def _recount(self) -> None:
        if self.layer is not None and self.layer not in self.viewer.layers:  # deleted meanwhile
            self.set_layer(None)
        if self.layer is not None:
            self.counts = lesion_voxels_per_slice(self.layer.data)

    def _describe(self, extra: str = "") -> None:
        if self.layer is None:
            self.where.setText("")
            return
        slices = self.lesion_slices()
        if not slices:
            self.where.setText("no lesion in this layer")
            return
        here = self.current_slice()
        text = f"lesion on {len(slices)} of {len(self.counts)} slices"
        if here is not None and here in slices:
            text += f"; slice {here}: {slices.index(here) + 1} of {len(slices)}, {int(self.counts[here])} voxels"
        elif here is not None:
            text += f"; slice {here} has none"
        self.where.setText(text + (f" — {extra}" if extra else ""))
