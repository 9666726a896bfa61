"""The base of every dock that runs a job: a device picker, a Run button that turns into Cancel, progress, status.

:class:`JobDock` subclasses implement ``start_job`` (read the inputs, return the job; raise InputError for bad
input). :class:`ImageJobDock` adds the image picker: its subclasses implement :meth:`ImageJobDock.prepare` (the
generator job for one CT) and :meth:`ImageJobDock.show_result` (turn the job's result into layers).
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QFormLayout, QLabel, QProgressBar, QPushButton, QSizePolicy, QWidget

from napari_covidseg._widgets._common import (
    LayerPicker,
    device_combo,
    image_picker,
    layer_volume,
    placement,
    scrolling_layout,
)
from napari_covidseg._widgets._workers import JobRunner
from napari_covidseg.errors import CheckpointError, InputError
from napari_covidseg.io.volume import CTVolume

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)


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
        layout = scrolling_layout(self)
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


# One-time work that napari, vispy and torch do in whichever thread first needs it, slow enough to freeze the
# viewer when that is the GUI thread (benchmarks/stall_probe.py): napari and vispy building a dock's first result
# layer import pandas (layer features) and skimage's colour conversions (the Labels layer's default random
# colormap; they pull in scipy.linalg) and compute vispy's dash patterns for the Labels polygon overlay, ~0.6 s in
# one stall; torch building the first optimiser imports torch._dynamo, ~2 s holding the GIL for up to 150 ms at a
# time. All of it is plain Python/numpy, so a dock starts it in a background thread when it opens, and the jobs run
# it again first (a no-op by then).
_LAYER_IMPORTS = ("pandas", "skimage.color.colorconv", "scipy.linalg", "scipy.ndimage")
_TRAINING_IMPORTS = ("torch._dynamo",)
_started: set[Callable[[], None]] = set()


def _import_all(names) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # pragma: no cover - napari's and torch's own modules; the caller imports them as before
            log.debug("could not pre-import %s", name, exc_info=True)


def warm_layer_imports() -> None:
    """napari's and vispy's one-time set-up for result layers, done in the calling thread (a no-op once done)."""
    _import_all(_LAYER_IMPORTS)
    try:
        from vispy.visuals.line.dash_atlas import DashAtlas

        DashAtlas()  # fills vispy's lru-cached dash patterns; no OpenGL involved
    except Exception:  # pragma: no cover - a vispy without this module: nothing to warm
        log.debug("could not pre-compute vispy's dash patterns", exc_info=True)


def warm_training_imports() -> None:
    """What torch imports when the first optimiser is built (torch._dynamo), done in the calling thread."""
    _import_all(_TRAINING_IMPORTS)


def warm_in_background(warm: Callable[[], None]) -> threading.Thread | None:
    """Run ``warm`` once per process in a daemon thread (returns it; None when it was started before)."""
    if warm in _started:
        return None
    _started.add(warm)
    thread = threading.Thread(target=warm, name=f"covidseg-{warm.__name__}", daemon=True)
    thread.start()
    return thread


def _warming(job: Callable[[], Generator[Any, None, Any]]) -> Callable[[], Generator[Any, None, Any]]:
    """``job`` preceded by ``warm_layer_imports`` (in the worker thread; a no-op when the dock's warm-up finished)."""

    def run():
        warm_layer_imports()
        return (yield from job())

    return run


class ImageJobDock(JobDock):
    """A job on the CT chosen in the ``image`` picker; results are placed exactly on that layer."""

    def __init__(self, napari_viewer: napari.Viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.image = image_picker(napari_viewer)
        warm_in_background(warm_layer_imports)

    def start_job(self):
        layer = self.image.layer()
        volume = layer_volume(layer)
        job, description = self.prepare(layer, volume)
        like, name = placement(layer), layer.name
        return _warming(job), description, lambda result: self.show_result(result, volume, like, name), layer

    def prepare(self, layer, volume: CTVolume) -> tuple[Callable[[], Generator[Any, None, Any]], str]:
        """Read the dock's inputs; return (generator function, description). Raise InputError for bad input."""
        raise NotImplementedError

    def show_result(self, result, volume: CTVolume, like: dict, image_name: str) -> None:
        """GUI thread: put ``result`` into layers placed by ``like`` (see ``_common.placement``)."""
        raise NotImplementedError
