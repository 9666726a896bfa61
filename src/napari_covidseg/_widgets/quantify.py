"""Quantify dock: lung volumes, lesion volume per class, percent of each lung involved, severity score, HU bands.

The numbers are those of ``covidseg quantify`` (the same ``iter_quantify`` runs in a worker); the lung mask is added
as a Labels layer (outlines) so the user can see what "lung" meant, and the table exports as CSV or an HTML report.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.utils.notifications import show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QPushButton, QTableWidgetItem, QWidget

from napari_covidseg._widgets._common import add_lung_labels, fit_table_height, lesion_picker, new_table
from napari_covidseg._widgets._dock import ImageJobDock
from napari_covidseg._widgets._session import lungs_for
from napari_covidseg.analysis.quantify import SEVERITY_SCHEME, SIDES, Quantification, iter_quantify, write_csv
from napari_covidseg.errors import InputError

if TYPE_CHECKING:
    import napari


def card_text(model: str) -> tuple[str, str]:
    """The model card's summary and notes when ``model`` names an installed model, else the name itself."""
    from napari_covidseg.models.checkpoint import find_checkpoint

    try:
        card = find_checkpoint(model).card
    except InputError:
        return model, ""
    return f"{card.name}: {card.summary()}", card.notes


class QuantifyWidget(ImageJobDock):
    """Pick a CT and its lesion labels; Quantify fills the table (right, left, both lungs) and adds the lung mask."""

    RUN_TEXT = "Quantify"

    def __init__(self, napari_viewer: napari.Viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.lesions = lesion_picker(napari_viewer, self.image)
        self.lesions.setToolTip("The lesion labels to measure (a model's result, corrected or not)")
        self.table = new_table()
        self.severity = QLabel("")
        self.severity.setWordWrap(True)
        self.csv_button = QPushButton("Export CSV\u2026")
        self.csv_button.clicked.connect(lambda: self._ask_and_write("CSV (*.csv)", ".csv", self.export_csv))
        self.report_button = QPushButton("Save report\u2026")
        self.report_button.clicked.connect(lambda: self._ask_and_write("HTML (*.html)", ".html", self.save_report))
        exports = QWidget()
        row = QHBoxLayout(exports)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.csv_button)
        row.addWidget(self.report_button)
        self.lay_out({"image": self.image, "lesions": self.lesions}, [self.table, self.severity, exports])
        self.last: tuple[Quantification, object, np.ndarray, np.ndarray] | None = None
        self._sync_exports()

    def prepare(self, layer, volume):
        labels = self.lesions.layer()
        if labels is None:
            raise InputError("choose the lesion labels to measure (segment the scan first)")
        lesions = np.asarray(labels.data)
        lesions = lesions[np.newaxis] if lesions.ndim == 2 else lesions
        if lesions.shape != volume.shape:
            raise InputError(f"{labels.name!r} {lesions.shape} was not drawn on {layer.name!r} {volume.shape}")
        lesions = lesions.copy()  # a snapshot: edits during the job do not change its numbers
        classes = {int(k): v for k, v in labels.metadata.get("classes", {}).items()} or None
        model = labels.metadata.get("model") or f"labels layer {labels.name!r}"
        known = lungs_for(labels, layer.data)  # the lung mask Segment made of this very CT, if any
        note = "lung mask: classical HU lung mask (thresholds and morphology, no network), made when segmenting"

        def job():
            q, lungs = yield from iter_quantify(
                volume,
                lesions,
                lungs=known,
                lungs_note=note if known is not None else None,
                class_names=classes,
                model=model,
            )
            return q, volume, lesions, lungs

        return job, f"Quantifying {labels.name}"

    def show_result(self, result, volume, like: dict, image_name: str) -> None:
        q, volume, lesions, lungs = result
        self.last = (q, volume, lesions, lungs)
        add_lung_labels(self.viewer, lungs, volume, like, f"{image_name} lungs")
        self._fill(q)
        zones = ", ".join(f"{zone} {score}" for zone, score in q.zone_score.items())
        notes = f"<br><i>{len(q.notes)} note(s): hover here</i>" if q.notes else ""
        self.severity.setText(f"<b>CT severity score {q.severity} / 25</b><br><small>{zones}</small>{notes}")
        self.severity.setToolTip("<br><br>".join([SEVERITY_SCHEME, *q.notes]))  # long text: on hover, not in the way
        self._sync_exports()
        self.runner.set_status(f"{q.name}: {q.involvement_pct['total']:.1f} % of the lungs involved")

    def _fill(self, q: Quantification) -> None:
        """Rows: measures; columns: right, left, both lungs."""
        rows: list[tuple[str, dict[str, float], str]] = [("lung volume", q.lung_ml, "ml")]
        rows += [(f"{name}", by_side, "ml") for name, by_side in q.lesion_ml.items()]
        rows += [("involvement (all lesions)", q.involvement_pct, "%")]
        rows += [(f"{name}", by_side, "%") for name, by_side in q.class_pct.items()]
        rows += [(f"HU {band}", by_side, "%") for band, by_side in q.hu_bands.items()]
        # lesion the lung mask missed but that touches a lung is counted; lesion far from the lungs is not: both in
        # the table, not in a hover note, so nobody reads the lung figures without seeing what was left out
        rows += [("lesion at the lung border, counted", {"total": q.folded_ml}, "ml")]
        rows += [("lesion OUTSIDE the lungs, not counted", {"total": q.excluded_ml}, "ml")]
        self.table.clear()
        self.table.setColumnCount(1 + len(SIDES))
        self.table.setRowCount(len(rows))
        self.table.setHorizontalHeaderLabels(["measure", *("both" if s == "total" else s for s in SIDES)])
        for r, (label, by_side, unit) in enumerate(rows):
            self.table.setItem(r, 0, QTableWidgetItem(f"{label} ({unit})"))
            for c, side in enumerate(SIDES, start=1):
                cell = QTableWidgetItem(f"{by_side[side]:.1f}" if side in by_side else "")
                cell.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                self.table.setItem(r, c, cell)
        self.table.resizeColumnsToContents()
        fit_table_height(self.table)

    def _sync_exports(self) -> None:
        for button in (self.csv_button, self.report_button):
            button.setEnabled(self.last is not None)

    # --- exports (the buttons ask for a file name; tests and scripts call these directly) ---
    def export_csv(self, path: str | Path) -> Path:
        if self.last is None:
            raise InputError("quantify a scan first")
        return write_csv(self.last[0], path)

    def save_report(self, path: str | Path) -> Path:
        from napari_covidseg.analysis.report import render_report

        if self.last is None:
            raise InputError("quantify a scan first")
        q, volume, lesions, lungs = self.last
        summary, notes = card_text(q.model)
        return render_report(q, volume, lesions, lungs, path, card_summary=summary, card_notes=notes)

    def _ask_and_write(self, filter_text: str, suffix: str, write) -> None:
        start = str(Path.home() / f"{self.last[0].name if self.last else 'scan'}{suffix}")
        path, _ = QFileDialog.getSaveFileName(self, "Save as", start, filter_text)
        if not path:
            return
        try:
            written = write(path)
        except (InputError, OSError) as exc:
            self.runner.refuse(exc)
            return
        self.runner.set_status(f"saved {written}")
        show_info(f"saved {written}")
