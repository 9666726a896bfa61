"""One background job per dock: a core generator run by napari's thread worker, with Run <-> Cancel and progress.

The generator yields :class:`~napari_covidseg.inference.segment.Progress` after every batch. Layers are only touched
in the callbacks (they run in the GUI thread). Cancel asks the worker to stop at its next yield; an aborted job
delivers nothing, so no partial layer can appear. If the dock or the viewer goes away mid-run, the job is asked to
stop and its late callbacks do nothing.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton, QWidget

from napari_covidseg.errors import CheckpointError, InputError

log = logging.getLogger(__name__)


def readable(exc: BaseException) -> str:
    """One line for the user: our own errors as they are, anything else with its type."""
    if isinstance(exc, (InputError, CheckpointError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class JobRunner:
    """Start, cancel and report one generator job for a dock.

    Args:
        dock: the dock widget (its destruction stops the job).
        viewer: the napari viewer (a closed viewer gets no results).
        button: the Run button; it reads ``Cancel`` while a job runs.
        bar: an in-dock progress bar (napari's activity dock gets its own bar too).
        status: a label for the last message (errors, cancellation, timings).
    """

    def __init__(self, dock: QWidget, viewer, button: QPushButton, bar: QProgressBar, status: QLabel):
        self.dock, self.viewer, self.button, self.bar, self.status = dock, viewer, button, bar, status
        self.run_text = button.text()
        self.worker = None
        self.outcome = ""  # how the last job ended: "returned", "aborted" or "errored"
        self._pbar = None
        self._source, self._orphaned = None, False
        self._dock_gone = False
        dock.destroyed.connect(self._on_dock_destroyed)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(
        self,
        job: Callable[[], Generator[Any, None, Any]],
        *,
        description: str,
        on_result: Callable[[Any], None],
        source=None,
        on_yield: Callable[[Any], None] | None = None,
    ) -> None:
        """Run ``job()`` (a generator) in a thread; ``on_result(value)`` gets its return value in the GUI thread.

        ``source``: the layer the job reads; if it leaves the viewer (deleted, or the viewer closed) the job is
        cancelled, since its result would have nothing to sit on. ``on_yield(update)``: every progress update too.
        """
        if self.running:
            return
        if not inspect.isgeneratorfunction(job) and not _is_generator_partial(job):
            raise TypeError("JobRunner.start needs a generator function (it yields Progress after every batch)")
        worker = create_worker(job, _start_thread=False, _ignore_errors=True)  # errors go to _on_error, not re-raised
        self.worker = worker
        self.outcome = ""
        self._source, self._orphaned = source, False
        self._pbar = napari_progress(total=0, desc=description)
        self.bar.setRange(0, 0)
        self.bar.setVisible(True)
        self.button.setText("Cancel")
        self.set_status(f"{description}\u2026")
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        worker.yielded.connect(self._on_yielded)
        if on_yield is not None:
            worker.yielded.connect(lambda update: on_yield(update) if self._usable() else None)
        worker.returned.connect(lambda value: self._deliver(on_result, value, description))
        worker.errored.connect(lambda exc: self._on_error(exc, description))
        worker.aborted.connect(lambda: self._on_aborted(description))
        worker.finished.connect(self._on_finished)
        worker.start()

    def cancel(self) -> None:
        """Ask the job to stop at its next yield (after the batch it is computing)."""
        if self.worker is not None:
            self.worker.quit()
            self.button.setEnabled(False)
            self.set_status("cancelling after the current batch\u2026")

    def refuse(self, exc: BaseException) -> None:
        """Bad input found before starting: say why in the dock and as a napari notification."""
        self.set_status(readable(exc))
        show_error(readable(exc))

    def set_status(self, text: str) -> None:
        if self._usable():
            self.status.setText(text)

    # --- callbacks (GUI thread) ---
    def _usable(self) -> bool:
        """False once the dock's widgets are deleted (the viewer closed): nothing may touch them then."""
        if self._dock_gone:
            return False
        try:
            self.dock.objectName()
        except RuntimeError:  # the C++ widget is gone
            return False
        return True

    def _on_layer_removed(self, event) -> None:
        if self._source is not None and event.value is self._source and self.worker is not None:
            self._orphaned = True
            self.cancel_silently()
            self.set_status(f"{self._source.name!r} was removed; the job stops after the current batch")

    def _on_yielded(self, update) -> None:
        if not self._usable() or self._orphaned:
            self.cancel_silently()
            return
        done, total = int(getattr(update, "done", 0)), int(getattr(update, "total", 0))
        stage = getattr(update, "stage", "")
        if total > 0:
            self.bar.setRange(0, total)
            self.bar.setValue(done)
            if self._pbar is not None:
                self._pbar.total = total
                self._pbar.update(done - self._pbar.n)
        if stage and self._pbar is not None:
            self._pbar.set_description(stage)

    def _deliver(self, on_result, value, description: str) -> None:
        self.outcome = "returned"
        if not self._usable() or self._orphaned:
            return
        try:
            on_result(value)
        except Exception as exc:  # a bug or bad input found while building layers: tell the user, keep going
            self._on_error(exc, description)

    def _on_error(self, exc: BaseException, description: str) -> None:
        self.outcome = "errored"
        message = f"{description} failed: {readable(exc)}"
        if not isinstance(exc, (InputError, CheckpointError)):
            log.error(message, exc_info=exc)
        if self._usable():
            self.set_status(message)
            show_error(message)

    def _on_aborted(self, description: str) -> None:
        self.outcome = "aborted"
        if self._usable() and not self._orphaned:
            self.set_status(f"{description} cancelled; nothing was added")
            show_info(f"{description} cancelled")

    def _on_finished(self) -> None:
        self.worker = None
        self._source = None
        try:
            self.viewer.layers.events.removed.disconnect(self._on_layer_removed)
        except (TypeError, ValueError, RuntimeError):
            pass
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        if self._usable():
            self.button.setText(self.run_text)
            self.button.setEnabled(True)
            self.bar.setVisible(False)

    def cancel_silently(self) -> None:
        if self.worker is not None:
            self.worker.quit()

    def _on_dock_destroyed(self, *_) -> None:
        self._dock_gone = True
        self.cancel_silently()


def _is_generator_partial(job) -> bool:
    return isinstance(job, functools.partial) and inspect.isgeneratorfunction(job.func)
