"""A window that fits: all six docks open on a 1920x1080 screen, nothing cut off or below the screen's edge; every
button of every dock can be reached (its dock's tab raised, scrolled into view) inside the window."""

from __future__ import annotations

from qtpy.QtCore import QPoint, QRect
from qtpy.QtWidgets import QApplication, QDockWidget, QPushButton

from napari_covidseg._demo import DOCKS, fit_window, open_demo
from napari_covidseg._widgets._common import FitScrollArea

SCREEN = (1920, 1080)


def _dock_of(widget) -> QDockWidget:
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    return parent


def _global_rect(widget) -> QRect:
    return QRect(widget.mapToGlobal(QPoint(0, 0)), widget.size())


def test_six_docks_fit_a_1920x1080_screen(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)
    widgets = open_demo(viewer, None, compare=True, correct=True, quantify=True)
    assert set(widgets) == set(DOCKS)
    width, height = fit_window(viewer, size=SCREEN)
    window = viewer.window._qt_window
    qtbot.waitUntil(lambda: window.height() <= SCREEN[1], timeout=5000)
    assert (width, height) <= SCREEN and window.width() <= SCREEN[0] and window.height() <= SCREEN[1]
    frame = _global_rect(window)
    for key, widget in widgets.items():
        dock = _dock_of(widget)
        dock.show()
        dock.raise_()  # a tab of a tabbed dock area comes to the front
        QApplication.processEvents()
        area = widget.findChild(FitScrollArea)
        assert area is not None, f"{key}: its contents do not scroll"
        assert frame.contains(_global_rect(dock)), f"{key}: the dock reaches past the window"
        for button in widget.findChildren(QPushButton):
            if not button.isVisibleTo(widget):
                continue  # hidden on purpose (e.g. "Restore autosaved edits" with nothing to restore)
            area.ensureWidgetVisible(button)
            QApplication.processEvents()
            assert not button.visibleRegion().isEmpty(), f"{key}: {button.text()!r} cannot be scrolled into view"
            assert frame.contains(_global_rect(button).center()), f"{key}: {button.text()!r} is outside the window"
    shot = viewer.screenshot(str(tmp_path / "window.png"), canvas_only=False, flash=False)
    assert shot.shape[1] <= SCREEN[0] and shot.shape[0] <= SCREEN[1]
