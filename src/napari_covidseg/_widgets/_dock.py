"""The base of every dock: image and device pickers, a Run button that turns into Cancel, progress and a status line.

A dock subclass adds its own inputs, then implements :meth:`JobDock.prepare` (read the inputs, return the generator
job; raise InputError for bad input) and :meth:`JobDock.show_result` (turn the job's result into layers).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from napari.layers import Image
from qtpy.QtWidgets import QFormLayout, QLabel, QProgressBar, QPushButton, QSizePolicy, QVBoxLayout, QWidget

from napari_covidseg._widgets._common import LayerPicker, device_combo, layer_volume, placement
from napari_covidseg._widgets._workers import JobRunner
from napari_covidseg.errors import CheckpointError, InputError
from napari_covidseg.io.volume import CTVolume

if TYPE_CHECKING:
    import napari


class JobDock(QWidget):
    """One background job at a time on the chosen image layer; see the module docstring."""

    RUN_TEXT = "Run"

    def __init__(self, napari_viewer: napari.Viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.image = LayerPicker(napari_viewer, Image)
        self.device = device_combo()
        self.run_button = QPushButton(self.RUN_TEXT)
        self.run_button.clicked.connect(self._run_or_cancel)
        self.bar = QProgressBar()
        self.bar.setVisible(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Maximum)  # share the dock area, never squeeze
        self.runner = JobRunner(self, napari_viewer, self.run_button, self.bar, self.status)

    def lay_out(self, fields: dict[str, QWidget], results: list[QWidget]) -> None:
        """Inputs as a form, then Run, progress and status, then the result widgets."""
        form = QFormLayout()
        for label, widget in fields.items():
            form.addRow(label, widget)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        for widget in (self.run_button, self.bar, self.status, *results):
            layout.addWidget(widget)

    def reset_choices(self, *_) -> None:
        """napari calls this when layers change; every layer picker of the dock refreshes."""
        for picker in self.findChildren(LayerPicker):
            picker.reset_choices()

    def _run_or_cancel(self) -> None:
        if self.runner.running:
            self.runner.cancel()
        else:
            self.run()

    def run(self) -> None:
        """Start the job on the chosen image; bad input becomes a message, never a traceback."""
        try:
            layer = self.image.layer()
            volume = layer_volume(layer)
            job, description = self.prepare(layer, volume)
        except (InputError, CheckpointError) as exc:
            self.runner.refuse(exc)
            return
        like, name = placement(layer), layer.name
        self.runner.start(
            job,
            description=description,
            on_result=lambda result: self.show_result(result, volume, like, name),
            source=layer,
        )

    def prepare(self, layer, volume: CTVolume) -> tuple[Callable[[], Generator[Any, None, Any]], str]:
        """Read the dock's inputs; return (generator function, description). Raise InputError for bad input."""
        raise NotImplementedError

    def show_result(self, result, volume: CTVolume, like: dict, image_name: str) -> None:
        """GUI thread: put ``result`` into layers placed by ``like`` (see ``_common.placement``)."""
        raise NotImplementedError
