"""Correct dock: repaint a segmentation with napari's label tools, track the edited slices, autosave, save pairs.

Edits are watched through the Labels layer's ``paint`` event (paint, fill, erase and polygon all emit it). Every edit
(re)starts a short timer; when it fires, the whole label volume and the edited slice numbers are written atomically
to the corrections folder's ``autosave/`` sidecar, so a crash loses at most a few seconds of work. **Save
corrections** writes each edited slice as an image/mask pair (source geometry kept) into the corrections folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QButtonGroup,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSizePolicy,
    QWidget,
)

from napari_covidseg._widgets._common import (
    add_lesion_labels,
    image_picker,
    layer_volume,
    lesion_picker,
    placement,
    scrolling_layout,
)
from napari_covidseg._widgets._navigate import LesionNavigator
from napari_covidseg._widgets._session import session_for
from napari_covidseg._widgets._workers import readable
from napari_covidseg.constants import LESION_CLASSES, LESION_COLOURS
from napari_covidseg.corrections import (
    clear_autosave,
    list_corrections,
    read_autosave,
    save_corrections,
    write_autosave,
)
from napari_covidseg.errors import CheckpointError, InputError

if TYPE_CHECKING:
    import napari

AUTOSAVE_MS = 2000  # quiet time after the last edit before the autosave is written
EDITED_KEY = "edited slices"  # layer.metadata entry: the slices edited or checked by hand


def edited_slices(event_value, ndim: int) -> set[int]:
    """Axial slice numbers touched by one napari ``paint`` event (a list of history atoms)."""
    if ndim == 2:
        return {0}
    slices: set[int] = set()
    for atom in event_value or []:
        key = getattr(atom, "slice_key", None)
        if key is not None:  # a masked paint atom: its bounding box along z
            z = key[0]
            slices.update(range(z.start or 0, z.stop) if isinstance(z, slice) else [int(z)])
        else:  # (indices, old values, new values)
            slices.update(int(v) for v in np.unique(np.asarray(atom[0][0])))
    return slices


def _swatch(rgba) -> QIcon:
    pixmap = QPixmap(14, 14)
    pixmap.fill(QColor.fromRgbF(*rgba) if rgba[3] > 0 else QColor(60, 60, 60))
    return QIcon(pixmap)


class CorrectWidget(QWidget):
    """Pick the CT and the segmentation to correct; class buttons set napari's paint label."""

    def __init__(self, napari_viewer: napari.Viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.image = image_picker(napari_viewer)
        self.labels = lesion_picker(napari_viewer, self.image)
        self.class_buttons = QButtonGroup(self)
        class_row = QHBoxLayout()
        for class_id, name in LESION_CLASSES.items():
            button = QPushButton(_swatch(LESION_COLOURS[class_id]), "erase" if class_id == 0 else name)
            button.setCheckable(True)
            button.setToolTip(f"paint {name} (label {class_id})" if class_id else "erase back to background")
            self.class_buttons.addButton(button, class_id)
            class_row.addWidget(button)
        self.class_buttons.idClicked.connect(self.pick_class)
        self.edited_list = QListWidget()
        self.edited_list.setMaximumHeight(110)
        self.edited_list.itemDoubleClicked.connect(self._go_to_slice)
        self.mark_button = QPushButton("Mark this slice as checked")
        self.mark_button.setToolTip("A slice you reviewed and found right is a correction too")
        self.mark_button.clicked.connect(self.mark_current_slice)
        self.navigator = LesionNavigator(napari_viewer)
        self.folder = QLineEdit(str(self.session.folder))
        browse = QPushButton("\u2026")
        browse.setFixedWidth(28)
        browse.clicked.connect(self._browse)
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder, 1)
        folder_row.addWidget(browse)
        self.save_button = QPushButton("Save corrections")
        self.save_button.clicked.connect(self.save)
        self.restore_button = QPushButton("Restore autosaved edits")
        self.restore_button.setVisible(False)
        self.restore_button.clicked.connect(self.restore)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("image", self.image)
        form.addRow("labels", self.labels)
        form.addRow("folder", folder_row)
        layout = scrolling_layout(self)
        layout.addLayout(form)
        layout.addLayout(class_row)
        layout.addWidget(QLabel("Lesion slices of these labels"))
        layout.addWidget(self.navigator)
        for widget in (QLabel("Edited slices (double-click to go there)"), self.edited_list, self.mark_button):
            layout.addWidget(widget)
        for widget in (self.save_button, self.restore_button, self.status):
            layout.addWidget(widget)
        self.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Maximum)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(AUTOSAVE_MS)
        self._timer.timeout.connect(self.autosave)
        self._watched: Labels | None = None
        self._volume_cache: tuple[int, object] | None = None
        self.labels.currentTextChanged.connect(self._watch_current)
        self.image.currentTextChanged.connect(self._offer_restore)
        self.destroyed.connect(self._unwatch_on_destroy)
        self._watch_current()
        self._offer_restore()

    # --- choices ---
    def reset_choices(self, *_) -> None:
        self.image.reset_choices()
        self.labels.reset_choices()
        self._watch_current()

    def _watch_current(self, *_) -> None:
        layer = self.labels.layer()
        if layer is self._watched:
            return
        self._unwatch()
        self._watched = layer
        if layer is not None:
            layer.events.paint.connect(self._on_paint)
            layer.metadata.setdefault(EDITED_KEY, [])
        self.navigator.set_layer(layer)
        self._refresh_list()

    def _unwatch(self) -> None:
        if self._watched is not None:
            try:
                self._watched.events.paint.disconnect(self._on_paint)
            except (TypeError, ValueError, RuntimeError):
                pass
        self._watched = None

    def _unwatch_on_destroy(self, *_) -> None:
        if self._watched is not None:
            try:
                self._watched.events.paint.disconnect(self._on_paint)
            except (TypeError, ValueError, RuntimeError):
                pass

    def pick_class(self, class_id: int) -> None:
        """Set the paint label of the watched layer (0: erase) and switch napari to the brush."""
        layer = self._watched
        if layer is None:
            self._say("choose the labels layer to correct first")
            return
        layer.selected_label = int(class_id)
        layer.mode = "erase" if class_id == 0 else "paint"
        self.viewer.layers.selection.active = layer

    # --- edits ---
    def edited(self) -> list[int]:
        """Sorted slice numbers edited or checked on the watched layer."""
        return sorted(self._watched.metadata.get(EDITED_KEY, [])) if self._watched is not None else []

    def _add_edited(self, slices) -> None:
        if self._watched is None:
            return
        now = set(self._watched.metadata.get(EDITED_KEY, [])) | {int(z) for z in slices}
        self._watched.metadata[EDITED_KEY] = sorted(now)
        self._refresh_list()
        self._timer.start()  # debounce: written AUTOSAVE_MS after the last edit

    def _on_paint(self, event) -> None:
        self._add_edited(edited_slices(event.value, self._watched.data.ndim))

    def mark_current_slice(self) -> None:
        if self._watched is None:
            self._say("choose the labels layer to correct first")
            return
        z = 0 if self._watched.data.ndim == 2 else int(round(self._watched.world_to_data(self.viewer.dims.point)[0]))
        self._add_edited([z])

    def _refresh_list(self) -> None:
        self.edited_list.clear()
        saved = set(self.session.saved_keys)
        scan = self._scan_key_or_none()
        for z in self.edited():
            done = scan is not None and f"{scan}_z{z:04d}" in saved
            item = QListWidgetItem(f"slice {z}" + ("  \u2713 saved" if done else ""))
            item.setData(Qt.UserRole, z)
            self.edited_list.addItem(item)

    def _go_to_slice(self, item: QListWidgetItem) -> None:
        if self._watched is not None and self._watched.data.ndim == 3:
            self.navigator.go_to(int(item.data(Qt.UserRole)))

    # --- files ---
    def _folder(self) -> Path:
        text = self.folder.text().strip()
        if not text:
            raise InputError("choose a corrections folder")
        self.session.folder = Path(text).expanduser()
        return self.session.folder

    def _browse(self) -> None:
        chosen = QFileDialog.getExistingDirectory(self, "Corrections folder", self.folder.text())
        if chosen:
            self.folder.setText(chosen)
            self._offer_restore()

    def _pair(self):
        """The CT volume and the (z, y, x) labels being corrected; InputError when they do not belong together."""
        image, layer = self.image.layer(), self._watched
        if layer is None:
            raise InputError("choose the labels layer to correct")
        volume = self._volume(image)
        labels = np.asarray(layer.data)
        labels = labels[np.newaxis] if labels.ndim == 2 else labels
        if labels.shape != volume.shape:
            raise InputError(f"{layer.name!r} {labels.shape} was not drawn on {image.name!r} {volume.shape}")
        return volume, labels

    def _volume(self, image):
        """The CT of ``image`` (cached per layer: autosaves must not copy a large CT every few seconds)."""
        if image is None:
            raise InputError("choose the CT image layer")
        if self._volume_cache is None or self._volume_cache[0] != id(image.data):
            self._volume_cache = (id(image.data), layer_volume(image))
        return self._volume_cache[1]

    def _scan_key_or_none(self) -> str | None:
        from napari_covidseg.corrections import scan_key

        try:
            return scan_key(self._volume(self.image.layer()))
        except InputError:
            return None

    def autosave(self) -> None:
        """Write the sidecar now (the timer calls this after edits); failures are reported, never raised."""
        if self._watched is None or not self.edited():
            return
        try:
            volume, labels = self._pair()
            meta = {"layer": self._watched.name, "model": self._watched.metadata.get("model", "")}
            write_autosave(self._folder(), volume, labels, self.edited(), meta)
        except (InputError, OSError) as exc:
            self._say(f"autosave failed: {readable(exc)}", error=True)
            return
        self.status.setText(f"autosaved {len(self.edited())} edited slice(s)")

    def save(self) -> None:
        """Save every edited slice as an image/mask pair; saving a slice again replaces only that pair."""
        try:
            volume, labels = self._pair()
            slices = self.edited()
            if not slices:
                raise InputError("no edited slices yet: paint, fill or erase, or mark a slice as checked")
            folder = self._folder()
            notes: list[str] = []
            model = self._watched.metadata.get("model", "")
            entries = save_corrections(folder, volume, labels, slices, model=model, notes=notes)
            clear_autosave(folder, volume)
        except (InputError, CheckpointError, OSError) as exc:
            self._say(f"saving failed, nothing was lost: {readable(exc)}", error=True)
            return
        self._timer.stop()
        self.session.add([e.key for e in entries])
        total = len(list_corrections(folder))
        self._refresh_list()
        self.restore_button.setVisible(False)
        done = f"saved {len(entries)} corrected slice(s) to {folder} ({total} in the folder)"
        self._say("; ".join([done, *notes]), info=True)

    def _offer_restore(self, *_) -> None:
        """Show 'Restore autosaved edits' when the chosen CT has unsaved edits from an earlier session."""
        try:
            found = read_autosave(self._folder(), self._volume(self.image.layer()))
        except InputError:
            found = None
        self.restore_button.setVisible(found is not None)
        if found is not None:
            self.status.setText(f"unsaved edits of {len(found.edited)} slice(s) from {found.meta.get('saved', '?')}")

    def restore(self) -> None:
        """Add the autosaved labels as a new layer on the CT (existing layers are never overwritten)."""
        image = self.image.layer()
        try:
            volume = self._volume(image)
            found = read_autosave(self._folder(), volume)
            if found is None:
                raise InputError("no autosave for this scan in the corrections folder")
        except InputError as exc:
            self._say(readable(exc), error=True)
            return
        name = f"{image.name} lesions (restored edits)"
        layer = add_lesion_labels(self.viewer, found.labels, volume, placement(image), name, dict(LESION_CLASSES))
        layer.metadata[EDITED_KEY] = list(found.edited)
        self.labels.reset_choices()
        self.labels.setCurrentText(layer.name)
        self._watch_current()
        self.restore_button.setVisible(False)
        self._say(f"restored {len(found.edited)} edited slice(s) into {layer.name!r}", info=True)

    def _say(self, text: str, *, error: bool = False, info: bool = False) -> None:
        self.status.setText(text)
        if error:
            show_error(text)
        elif info:
            show_info(text)
