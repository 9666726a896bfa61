"""Pieces every dock shares: layer and model pickers, the device choice, and turning results into layers."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal
from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFrame,
    QHBoxLayout,
    QPushButton,
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_covidseg.constants import LESION_COLOURS, LUNG_COLOURS, LUNG_NAMES
from napari_covidseg.errors import InputError
from napari_covidseg.io.volume import CTVolume
from napari_covidseg.layers import (
    CAM,
    CT_VIEW,
    DISAGREEMENT,
    GEOMETRY_KEY,
    LESIONS,
    LUNGS,
    ROLE_KEY,
    SOURCE_KEY,
    labels_layer_kwargs,
    layer_role,
    volume_from_layer,
)
from napari_covidseg.models.checkpoint import Checkpoint, list_checkpoints

if TYPE_CHECKING:
    import napari

NONE_TEXT = "(none)"


class _ModelEvents:
    """``models.changed()`` after a model is added or removed: every model picker in every dock rescans.
    ``models.created(name)``: a new model to select in the pickers made with ``follow_new=True``."""

    changed = Signal()
    created = Signal(str)


models = _ModelEvents()


class LayerPicker(QComboBox):
    """A combo box of the viewer's layers of one type that ``accept`` lets through, top layer first.

    A choice made from outside (the user, or ``setCurrentText``) is kept while its layer exists, renamed or not.
    Without one the picker preselects ``prefer``'s layer (default: the top accepted layer) and follows new layers.
    ``image``: the CT picker this picker belongs to; changing the CT drops the choice and preselects again.
    """

    def __init__(
        self,
        viewer: napari.Viewer,
        layer_type: type,
        *,
        allow_none: bool = False,
        accept: Callable[[Any], bool] | None = None,
        prefer: Callable[[list], Any] | None = None,
        image: LayerPicker | None = None,
        parent=None,
    ):
        super().__init__(parent)
        self.viewer, self.layer_type, self.allow_none = viewer, layer_type, allow_none
        self.accept, self.prefer = accept, prefer
        self._chosen = None  # the layer chosen from outside, or None: preselect
        self._followers: list[LayerPicker] = []  # pickers whose ``image`` is this one
        self.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        self.currentTextChanged.connect(self._remember)
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered, events.renamed):
            event.connect(self.reset_choices)
        self.destroyed.connect(lambda *_: _disconnect_all(events, self.reset_choices))
        if image is not None:
            image._followers.append(self)
        self.reset_choices()

    def candidates(self) -> list:
        return [
            layer
            for layer in reversed(self.viewer.layers)
            if isinstance(layer, self.layer_type) and (self.accept is None or self.accept(layer))
        ]

    def _remember(self, text: str) -> None:
        """currentTextChanged outside reset_choices (which blocks signals): a choice to keep."""
        self._chosen = self.viewer.layers[text] if text and text in self.viewer.layers else None
        self._tell_followers()

    def _tell_followers(self) -> None:
        for picker in self._followers:
            picker._image_changed()

    def _image_changed(self, *_) -> None:
        self._chosen = None
        self.reset_choices()

    def reset_choices(self, *_) -> None:
        before = self.currentText()
        layers = self.candidates()
        names = [layer.name for layer in layers]
        if self._chosen is not None and not any(layer is self._chosen for layer in layers):
            self._chosen = None  # its layer is gone
        pick = self._chosen
        if pick is None and layers:
            pick = self.prefer(layers) if self.prefer is not None else layers[0]
        self.blockSignals(True)
        self.clear()
        if self.allow_none:
            self.addItem(NONE_TEXT)
        self.addItems(names)
        self.setCurrentText(pick.name if pick is not None else (NONE_TEXT if self.allow_none else ""))
        self.blockSignals(False)
        if self.currentText() != before:
            self._tell_followers()

    def layer(self):
        """The chosen layer, or None."""
        name = self.currentText()
        if not name or name == NONE_TEXT or name not in self.viewer.layers:
            return None
        layer = self.viewer.layers[name]
        return layer if isinstance(layer, self.layer_type) else None


def is_ct_image(layer) -> bool:
    """An Image layer the docks offer as a CT: not a map made from one (a CAM), not the Compare grid's CT views."""
    return layer_role(layer) not in (CAM, CT_VIEW)


def prefer_greyscale(layers: list):
    """The top greyscale image (an RGB one is listed, for its message, but not preselected)."""
    return next((layer for layer in layers if not getattr(layer, "rgb", False)), layers[0])


def is_lesion_labels(layer) -> bool:
    """A Labels layer the docks offer as lesions: not a lung mask, not a disagreement map."""
    return layer_role(layer) not in (LUNGS, DISAGREEMENT)


def image_picker(viewer: napari.Viewer) -> LayerPicker:
    """The CT picker of every dock: CT images only, the top greyscale one preselected."""
    return LayerPicker(viewer, _image_type(), accept=is_ct_image, prefer=prefer_greyscale)


def lesion_picker(viewer: napari.Viewer, image: LayerPicker) -> LayerPicker:
    """Lesion labels, the latest made on ``image``'s CT preselected (else the top one of its shape)."""

    def prefer(layers: list):
        ct = image.layer()
        if ct is None:
            return layers[0]
        mine = [layer for layer in layers if (layer.metadata or {}).get(SOURCE_KEY) == ct.name]
        mine = mine or [layer for layer in layers if np.shape(layer.data)[-2:] == np.shape(ct.data)[-2:]]
        return (mine or layers)[0]

    return LayerPicker(viewer, _labels_type(), accept=is_lesion_labels, prefer=prefer, image=image)


def _image_type():
    from napari.layers import Image

    return Image


def _labels_type():
    from napari.layers import Labels

    return Labels


def _disconnect_all(events, slot) -> None:
    for event in (events.inserted, events.removed, events.reordered, events.renamed):
        _disconnect(event, slot)


def _disconnect(signal, slot) -> None:
    try:
        signal.disconnect(slot)
    except (TypeError, ValueError, RuntimeError):
        pass


_SKIPPED_SEEN: set[str] = set()  # broken cards already announced in this session (one notification each)


class ModelPicker(QWidget):
    """Bundled and user models of one task; hovering an entry shows its model card; the button rescans."""

    def __init__(self, task: str, default: str | None = None, parent=None, *, follow_new: bool = False):
        super().__init__(parent)
        self.task = task
        self.combo = QComboBox()
        self.refresh_button = QPushButton("\u21bb")
        self.refresh_button.setToolTip("Rescan the model folder (for models trained since the dock opened)")
        self.refresh_button.setFixedWidth(28)
        self.refresh_button.clicked.connect(self.refresh)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.combo, 1)
        row.addWidget(self.refresh_button)
        self._checkpoints: list[Checkpoint] = []
        self.combo.currentIndexChanged.connect(self._sync_tooltip)
        models.changed.connect(self.refresh)
        self.destroyed.connect(lambda *_: _disconnect(models.changed, self.refresh))
        if follow_new:
            models.created.connect(self._select_new)
            self.destroyed.connect(lambda *_: _disconnect(models.created, self._select_new))
        self.refresh()
        if default is not None:
            self.select(default)

    def refresh(self, *_) -> None:
        """Rescan bundled and user models, keeping the current choice when it still exists."""
        try:
            current = self.selected_name()
        except RuntimeError:  # this picker's Qt side is gone (its viewer closed): stop listening
            _disconnect(models.changed, self.refresh)
            _disconnect(models.created, self._select_new)
            return
        skipped: list[str] = []
        self._checkpoints = list_checkpoints(self.task, skipped=skipped)
        self._note_skipped(skipped)
        self.combo.clear()
        for i, ckpt in enumerate(self._checkpoints):
            label = ckpt.name if ckpt.bundled else f"{ckpt.name} (yours)"
            self.combo.addItem(label)
            self.combo.setItemData(i, card_tooltip(ckpt), Qt.ToolTipRole)
        if current:
            self.select(current)
        self._sync_tooltip(self.combo.currentIndex())

    def _note_skipped(self, skipped: list[str]) -> None:
        """Broken model cards in the models folder: listed on the refresh button, a notification when new."""
        tip = "Rescan the model folder (for models trained since the dock opened)"
        if skipped:
            tip += "\n\nSkipped, cannot be used:\n" + "\n".join(skipped[:10])
        self.refresh_button.setToolTip(tip)
        new = [line for line in skipped if line not in _SKIPPED_SEEN]
        if new:
            from napari.utils.notifications import show_warning

            _SKIPPED_SEEN.update(new)
            show_warning(f"{len(new)} model card(s) skipped: " + "; ".join(new[:3]))

    def _sync_tooltip(self, index: int) -> None:
        self.combo.setToolTip(self.combo.itemData(index, Qt.ToolTipRole) or "")

    def _select_new(self, name: str) -> None:
        self.refresh()
        try:
            self.select(name)
        except RuntimeError:  # Qt side gone; refresh() has disconnected it
            pass

    def select(self, name: str) -> bool:
        for i, ckpt in enumerate(self._checkpoints):
            if ckpt.name == name:
                self.combo.setCurrentIndex(i)
                return True
        return False

    def selected_name(self) -> str:
        index = self.combo.currentIndex()
        return self._checkpoints[index].name if 0 <= index < len(self._checkpoints) else ""

    def checkpoint(self) -> Checkpoint:
        index = self.combo.currentIndex()
        if index < 0 or index >= len(self._checkpoints):
            raise InputError(f"no {self.task} model installed; train one or reinstall the plugin")
        return self._checkpoints[index]


def card_tooltip(ckpt: Checkpoint) -> str:
    """The model card in a few lines: what it is, what it was trained on, how it measured, what to watch for."""
    card = ckpt.card
    lines = [f"<b>{card.name}</b> ({card.architecture}, v{card.version})", card.summary()]
    protocol = card.metrics.get("protocol") if isinstance(card.metrics, dict) else None
    if protocol:
        lines.append(f"measured: {protocol}")
    if card.notes:
        lines.append(f"<i>{card.notes}</i>")
    lines.append("bundled with the plugin" if ckpt.bundled else f"file: {ckpt.weights}")
    return "<br>".join(lines)


def device_choices() -> list[str]:
    """``auto`` first, then every device this machine has."""
    import torch

    choices = ["auto", "cpu"]
    if torch.cuda.is_available():
        choices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        choices.append("mps")
    return choices


def device_combo() -> QComboBox:
    combo = QComboBox()
    combo.addItems(device_choices())
    combo.setToolTip("auto: the GPU when there is one, otherwise the CPU")
    return combo


def layer_volume(layer) -> CTVolume:
    """The CT behind an Image layer (raises InputError with a readable reason for RGB, 4-D, ... layers)."""
    if layer is None:
        raise InputError("choose an image layer first (open a CT with File > Open)")
    if getattr(layer, "rgb", False):
        raise InputError(f"layer {layer.name!r} is an RGB image; a greyscale CT is needed")
    return volume_from_layer(layer.data, layer.scale, layer.metadata, layer.name)


def placement(layer) -> dict:
    """Where ``layer`` sits in the world, so a result layer lands exactly on top of it."""
    return {
        "scale": list(layer.scale),
        "translate": list(layer.translate),
        "rotate": np.asarray(layer.rotate),
        "shear": np.asarray(layer.shear),
        "affine": np.asarray(layer.affine.affine_matrix),
        "metadata": dict(layer.metadata),
    }


def same_layer(viewer, name: str, data: np.ndarray, role: str):
    """The layer called ``name`` if it is one of ours of ``role`` on this grid: a lesion layer is reused only when it
    holds exactly ``data`` (never over someone's edits; an equal result is not added twice as "name [1]"); a
    disagreement map is refreshed with ``data``. None otherwise."""
    layer = viewer.layers[name] if name in viewer.layers else None
    if layer is None or layer_role(layer) != role or np.shape(layer.data) != np.shape(data):
        return None
    if role == DISAGREEMENT:
        layer.data = data
        return layer
    return layer if np.array_equal(np.asarray(layer.data), data) else None


def add_lesion_labels(
    viewer, labels: np.ndarray, volume: CTVolume, like: dict, name: str, classes: dict, extra=None, image: str = ""
):
    """Add a lesion Labels layer on the image described by ``like`` (2-D layers get 2-D labels back); ``image``:
    the name of that image layer (the pickers preselect the latest lesion layer of the chosen CT)."""
    data = labels[0] if volume.meta.get("squeezed") else labels
    kwargs = labels_layer_kwargs(name, like, classes, {ROLE_KEY: LESIONS, SOURCE_KEY: image, **(extra or {})})
    layer = viewer.add_labels(data, **kwargs, rotate=like["rotate"], shear=like["shear"], affine=like["affine"])
    return layer


def add_lung_labels(viewer, lungs: np.ndarray, volume: CTVolume, like: dict, name: str):
    """Add a lung mask (1 right, 2 left) as an outlined Labels layer on the image described by ``like``."""
    metadata = {k: v for k, v in like["metadata"].items() if k in (GEOMETRY_KEY, "spacing")}
    metadata["classes"] = dict(LUNG_NAMES)
    metadata[ROLE_KEY] = LUNGS
    layer = viewer.add_labels(
        lungs[0] if volume.meta.get("squeezed") else lungs,
        name=name,
        colormap=dict(LUNG_COLOURS),
        features={"index": list(LUNG_NAMES), "class": list(LUNG_NAMES.values())},
        metadata=metadata,
        opacity=0.7,
        **{k: like[k] for k in ("scale", "translate", "rotate", "shear", "affine")},
    )
    layer.contour = 1  # outlines: the lesions underneath stay visible
    return layer


def lungs_checkbox() -> QCheckBox:
    """The lung-first switch of every dock that segments (on: lung-first; off: whole slice)."""
    box = QCheckBox("only inside the lungs")
    box.setChecked(True)
    box.setToolTip(
        "On (default): find the lungs, crop each slice to them as the training slices are framed, and keep "
        "lesions only inside the lungs (filled, with a margin for consolidation and effusion at the chest wall). "
        "Off: segment each whole slice; lesions outside the lungs are then reported separately. 8-bit PNG/JPG "
        "slices are taken as already lung-cropped and always segmented whole."
    )
    return box


def framing_of(box: QCheckBox) -> str:
    return "auto" if box.isChecked() else "whole"


def fill_volume_table(table: QTableWidget, classes: dict[int, str], columns: dict[str, dict[str, float]]) -> None:
    """Rows: one per foreground class with a colour swatch; columns: ``{header: {class name: value}}``."""
    rows = [(i, n) for i, n in classes.items() if i != 0]
    table.clear()
    table.setColumnCount(1 + len(columns))
    table.setRowCount(len(rows))
    table.setHorizontalHeaderLabels(["class", *columns])
    for r, (class_id, name) in enumerate(rows):
        item = QTableWidgetItem(name)
        rgba = LESION_COLOURS.get(class_id, (0.6, 0.6, 0.6, 1.0))
        item.setData(Qt.DecorationRole, QColor.fromRgbF(*rgba))
        table.setItem(r, 0, item)
        for c, values in enumerate(columns.values(), start=1):
            value = values.get(name)
            text = "" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))
            cell = QTableWidgetItem(text)
            cell.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
            table.setItem(r, c, cell)
    table.resizeColumnsToContents()
    fit_table_height(table)


def fit_table_height(table: QTableWidget) -> None:
    """Exactly as tall as its rows (plus a scroll bar when the columns overflow), so docks below keep their room."""
    header = table.horizontalHeader()
    height = header.sizeHint().height() + 2 * table.frameWidth() + 2
    height += table.rowCount() * table.verticalHeader().defaultSectionSize()
    if header.length() > table.viewport().width():
        height += table.horizontalScrollBar().sizeHint().height()
    table.setFixedHeight(max(height, 40))
    parent = table.parentWidget()
    while parent is not None:  # the dock's size hint grew (through its scroll area): let the dock area give room
        parent.updateGeometry()
        parent = parent.parentWidget() if not isinstance(parent, FitScrollArea) else None


class FitScrollArea(QScrollArea):
    """A dock's contents: as tall as they are when the dock area has the room, scrolling when it has not (a short
    screen, several docks), never cut off; no sideways scrolling."""

    MIN_HEIGHT = 120

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)

    def sizeHint(self) -> QSize:
        inner = self.widget().sizeHint() if self.widget() is not None else QSize(0, 0)
        return QSize(inner.width() + self.verticalScrollBar().sizeHint().width(), inner.height())

    def minimumSizeHint(self) -> QSize:
        inner = self.widget().minimumSizeHint() if self.widget() is not None else QSize(0, 0)
        return QSize(inner.width() + self.verticalScrollBar().sizeHint().width(), self.MIN_HEIGHT)


def scrolling_layout(dock: QWidget) -> QVBoxLayout:
    """Give ``dock`` a :class:`FitScrollArea` and return the layout to put its contents in."""
    inner = QWidget()
    area = FitScrollArea(dock)
    area.setWidget(inner)
    outer = QVBoxLayout(dock)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    return QVBoxLayout(inner)


def new_table(height: int = 60) -> QTableWidget:
    """A read-only table; it grows to fit its rows when filled."""
    table = QTableWidget()
    table.setEditTriggers(QTableWidget.NoEditTriggers)
    table.verticalHeader().setVisible(False)
    table.horizontalHeader().setStretchLastSection(True)
    table.setFixedHeight(height)
    return table
