"""The base of every dock that runs a job: a device picker, a Run button that turns into Cancel, progress, status.

:class:`JobDock` subclasses implement ``start_job`` (read the inputs, return the job; raise InputError for bad
input). :class:`ImageJobDock` adds the image picker: its subclasses implement :meth:`ImageJobDock.prepare` (the
generator job for one CT) and :meth:`ImageJobDock.show_result` (turn the job's result into layers).
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
    """One background job at a time; see the module docstring."""

    RUN_TEXT = "Run"

    def __init__(self, napari_viewer: napari.Viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
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
        """Start the job; bad input becomes a message, never a traceback."""
        try:
            job, description, on_result, source = self.start_job()
        except (InputError, CheckpointError) as exc:
            self.runner.refuse(exc)
            return
        self.runner.start(job, description=description, on_result=on_result, source=source, on_yield=self.on_progress)

    def on_progress(self, update) -> None:
        """Every progress update of the running job (GUI thread); e.g. a live loss curve."""

    def start_job(self) -> tuple[Callable[[], Generator], str, Callable[[Any], None], Any]:
        """(generator function, description, result callback, layer the job reads or None)."""
        raise NotImplementedError


class ImageJobDock(JobDock):
    """A job on the CT chosen in the ``image`` picker; results are placed exactly on that layer."""

    def __init__(self, napari_viewer: napari.Viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.image = LayerPicker(napari_viewer, Image)

    def start_job(self):
        layer = self.image.layer()
        volume = layer_volume(layer)
        job, description = self.prepare(layer, volume)
        like, name = placement(layer), layer.name
        return job, description, lambda result: self.show_result(result, volume, like, name), layer

    def prepare(self, layer, volume: CTVolume) -> tuple[Callable[[], Generator[Any, None, Any]], str]:
        """Read the dock's inputs; return (generator function, description). Raise InputError for bad input."""
        raise NotImplementedError

    def show_result(self, result, volume: CTVolume, like: dict, image_name: str) -> None:
        """GUI thread: put ``result`` into layers placed by ``like`` (see ``_common.placement``)."""
        raise NotImplementedError
