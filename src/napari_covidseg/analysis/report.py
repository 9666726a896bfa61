"""A one-page, self-contained HTML report of a :class:`~napari_covidseg.analysis.quantify.Quantification`.

``render_report(q, volume, lesions, lungs, path)`` writes a single HTML file (inline CSS, images as base64 PNG data
URIs made with Pillow, an inline SVG bar chart; no JavaScript, no external files) with: the scan name and date, a
"research use only" line, what made the lesions (model card summary and notes), tables of the measures, an
involvement bar chart per lung and zone, a few axial key slices with the lesion overlay and lung outline, and the
software version and source file.

Every measured number on the page is taken from ``q.rows()``: it sits in an element with a ``data-measure``
attribute (``"measure|region|class"``, the row's key) holding the value in a ``class="v"`` child and the row's unit in
``data-unit``. Other numbers appear only in labelled free text (``data-text``: date, captions, notes, version,
definitions), so a test can check that no unlabelled number is shown. Nothing here imports Qt or napari.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_covidseg.analysis.quantify import (
    ALL_LESIONS,
    BOTH_LUNGS,
    HU_BANDS,
    OUTSIDE_LUNGS,
    SEVERITY_SCHEME,
    SIDES,
    ZONES,
    Quantification,
)
from napari_covidseg.constants import CONSOLIDATION, GGO, LESION_CLASSES, LESION_COLOURS, LUNG_WINDOW
from napari_covidseg.errors import InputError
from napari_covidseg.io.volume import CTVolume
from napari_covidseg.io.writers import write_text_atomic

RESEARCH_ONLY = "Research use only — not for diagnostic use"
IMAGE_WIDTH = 256  # px of each key-slice image
LESION_ALPHA = 0.5  # overlay opacity (times the class colour's own alpha)
OUTLINE_RGB = (0, 255, 255)  # lung-mask outline: cyan
FALLBACK_RGBA = (1.0, 0.0, 1.0, 1.0)  # magenta for label values without a colour in LESION_COLOURS
DISPLAY_WINDOW = (0.0, 255.0)  # grey range of 8-bit display-intensity volumes
# Model class shown next to each HU band in the cross-check table.
BAND_COUNTERPART = {"ground-glass-like": LESION_CLASSES[GGO], "consolidation-like": LESION_CLASSES[CONSOLIDATION]}

_CSS = """
body { font: 13px/1.35 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #111;
       max-width: 1060px; margin: 12px auto; padding: 0 12px; }
h1 { font-size: 20px; margin: 0 0 2px; } h2 { font-size: 15px; margin: 14px 0 4px; }
.meta { color: #444; margin: 0 0 4px; }
.ruo { border: 2px solid #b00; color: #b00; font-weight: 700; padding: 4px 8px; margin: 6px 0; font-size: 15px; }
.cols { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
table { border-collapse: collapse; margin: 2px 0 6px; }
th, td { border: 1px solid #bbb; padding: 2px 6px; text-align: left; vertical-align: top; }
td[data-num] { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
thead th { background: #eee; } tr.sum td, tr.sum th { font-weight: 700; } tr.band { background: #f4f4f4; }
.u, .note, .small { color: #555; } .small { font-size: 11px; }
figure { display: inline-block; margin: 0 6px 6px 0; width: 24%; min-width: 200px; vertical-align: top; }
figure img { width: 100%; height: auto; image-rendering: auto; border: 1px solid #999; }
figcaption { font-size: 11px; color: #333; }
footer { margin-top: 10px; border-top: 1px solid #ccc; padding-top: 4px; font-size: 11px; color: #555; }
.legend span.sw { display: inline-block; width: 10px; height: 10px; margin: 0 3px 0 10px; border: 1px solid #666; }
@media print { body { margin: 0; max-width: none; font-size: 11px; } figure { width: 23%; min-width: 0; }
               h2 { break-after: avoid; } }
"""


# ------------------------------------------------------------------------------------------------------ public API


def render_report(
    q: Quantification,
    volume: CTVolume,
    lesions: np.ndarray,
    lungs: np.ndarray,
    path: str | Path,
    *,
    card_summary: str = "",
    card_notes: str = "",
    key_slices: int = 4,
) -> Path:
    """Write the HTML report of ``q`` to ``path`` atomically (temporary file beside it, then ``os.replace``).

    Args:
        q: the quantification to report (every measured number shown comes from ``q.rows()``).
        volume: the CT it was measured on (HU shown in the lung window; display intensities as they are).
        lesions: (z, y, x) lesion labels on the CT grid, drawn in ``LESION_COLOURS`` at about 50 % opacity.
        lungs: (z, y, x) lung mask (0 / 1 right / 2 left), e.g. the folded mask ``quantify`` returns; outlined.
        path: output file (a folder is refused).
        card_summary, card_notes: the model card's ``summary()`` and ``notes`` (free text, shown under the model).
        key_slices: number of axial slices to show (0 for none).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    lesions, lungs = np.asarray(lesions), np.asarray(lungs)
    for what, array in (("lesions", lesions), ("lung mask", lungs)):
        if array.shape != volume.shape:
            raise InputError(f"{what} shape {array.shape} does not match the CT {volume.shape}")
    page = build_html(
        q, volume, lesions, lungs, card_summary=card_summary, card_notes=card_notes, key_slices=key_slices
    )
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an HTML file")
    write_text_atomic(path, page)
    return path


def key_slice_indices(lesions: np.ndarray, lungs: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` axial slice indices (sorted) worth showing: the most lesion area, spread over the lungs.

    The z range of the lungs (of the lesions when the mask is empty, else the whole volume) is cut into ``n``
    equal parts; each part contributes its slice with the most lesion voxels. A part without lesion takes the
    largest-lesion slice elsewhere that is not next to one already chosen, and when no lesion is left its middle
    slice (so a scan without lesions shows evenly spaced mid-lung slices).
    """
    lesions, lungs = np.asarray(lesions), np.asarray(lungs)
    if lesions.ndim != 3 or lungs.shape != lesions.shape:
        raise InputError(f"lesions {lesions.shape} and lungs {lungs.shape} must be 3-D arrays of one shape")
    nz = lesions.shape[0]
    if n <= 0 or nz == 0:
        return []
    area = np.count_nonzero(lesions.reshape(nz, -1), axis=1)
    extent = np.flatnonzero(np.count_nonzero(lungs.reshape(nz, -1), axis=1))
    if extent.size == 0:
        extent = np.flatnonzero(area)
    lo, hi = (int(extent[0]), int(extent[-1]) + 1) if extent.size else (0, nz)
    n = min(int(n), hi - lo)
    edges = np.linspace(lo, hi, n + 1).round().astype(int)
    picks: list[int | None] = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        part = area[a:b]
        picks.append(int(a + np.argmax(part)) if part.size and part.max() > 0 else None)
    min_gap = max(1, (hi - lo) // (2 * n))
    by_area = [int(z) for z in np.argsort(-area, kind="stable") if area[z] > 0 and lo <= z < hi]
    for k, pick in enumerate(picks):
        if pick is not None:
            continue
        chosen = [p for p in picks if p is not None]
        spare = [z for z in by_area if all(abs(z - c) >= min_gap for c in chosen)]
        picks[k] = spare[0] if spare else int((edges[k] + edges[k + 1] - 1) // 2)
    return sorted(set(int(p) for p in picks if p is not None))


def overlay_png(
    ct_slice: np.ndarray,
    lesion_slice: np.ndarray,
    lung_slice: np.ndarray,
    spacing_yx: tuple[float, float],
    *,
    window: tuple[float, float] = LUNG_WINDOW,
    width: int = IMAGE_WIDTH,
) -> bytes:
    """PNG bytes of one axial slice: CT in ``window`` (grey), lesions blended in their colour, lung outline in cyan.

    The image is ``width`` pixels wide and as high as the slice's physical aspect needs
    (``rows * spacing_y / (columns * spacing_x)``): the CT is resampled bilinearly, the labels by nearest neighbour,
    and the outline (the border pixels of each lung label) is drawn one pixel thick at the output resolution.
    A lesion pixel is ``(1 - a) * grey + a * colour`` with ``a = LESION_ALPHA * colour alpha``.
    """
    from PIL import Image

    ct_slice = np.asarray(ct_slice, dtype=np.float32)
    lesion_slice, lung_slice = np.asarray(lesion_slice), np.asarray(lung_slice)
    if ct_slice.ndim != 2 or lesion_slice.shape != ct_slice.shape or lung_slice.shape != ct_slice.shape:
        raise InputError("overlay_png needs three 2-D slices of one shape")
    sy, sx = (float(s) for s in spacing_yx)
    if not (sy > 0 and sx > 0):
        raise InputError(f"spacing {spacing_yx} must be positive")
    rows, cols = ct_slice.shape
    out_w = max(int(width), 1)
    out_h = max(int(round(out_w * rows * sy / (cols * sx))), 1)
    size = (out_w, out_h)

    lo, hi = float(window[0]), float(window[1])
    grey_img = Image.fromarray(np.nan_to_num(ct_slice).astype(np.float32)).resize(size, Image.Resampling.BILINEAR)
    grey = np.clip((np.asarray(grey_img, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0) * 255.0
    rgb = np.repeat(grey[..., None], 3, axis=2)

    les = _resize_labels(lesion_slice, size)
    for value in np.unique(les):
        if value == 0:
            continue
        r, g, b, a = LESION_COLOURS.get(int(value), FALLBACK_RGBA)
        alpha = LESION_ALPHA * a
        hit = les == value
        rgb[hit] = (1.0 - alpha) * rgb[hit] + alpha * 255.0 * np.array([r, g, b], dtype=np.float32)

    lung = _resize_labels(lung_slice, size)
    for value in np.unique(lung):
        if value == 0:
            continue
        inside = lung == value
        border = inside & ~ndimage.binary_erosion(inside, border_value=0)
        rgb[border] = OUTLINE_RGB

    buf = io.BytesIO()
    Image.fromarray(np.rint(rgb).astype(np.uint8)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def software_version() -> str:
    """``napari_covidseg.__version__``, else the installed distribution's version, else ``"unknown"``."""
    import napari_covidseg

    version = getattr(napari_covidseg, "__version__", None)
    if version:
        return str(version)
    try:
        from importlib.metadata import version as dist_version

        return dist_version("napari-covidseg")
    except Exception:  # noqa: BLE001 - any metadata problem: still write the report
        return "unknown"


def format_value(value, unit: str) -> str:
    """How a measure is shown: integers as they are, ml and % with one decimal; non-finite values as "n/a"."""
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    value = float(value)
    if not math.isfinite(value):
        return "n/a"
    return f"{value + 0.0:.1f}".replace("-0.0", "0.0")


# ------------------------------------------------------------------------------------------------------ the page


def build_html(
    q: Quantification,
    volume: CTVolume,
    lesions: np.ndarray,
    lungs: np.ndarray,
    *,
    card_summary: str = "",
    card_notes: str = "",
    key_slices: int = 4,
    now: datetime.datetime | None = None,
) -> str:
    """The report page as a string (see :func:`render_report`)."""
    rows = _RowIndex(q.rows())
    date = (now or datetime.datetime.now()).strftime("%Y-%m-%d %H:%M")
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Lung involvement report: {e(q.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f'<h1>Lung involvement report: <span data-text="name">{e(q.name)}</span></h1>',
        f'<p class="meta">Report made <span data-text="date">{e(date)}</span></p>',
        f'<p class="ruo" role="note">{e(RESEARCH_ONLY)}</p>',
        _model_section(q, card_summary, card_notes),
        '<div class="cols">',
        _volume_table(q, rows),
        _severity_table(q, rows),
        "</div>",
        f'<p class="small" data-text="scheme"><b>Severity score:</b> {e(SEVERITY_SCHEME)}</p>',
        '<div class="cols">',
        _chart_section(rows),
        _crosscheck_table(q, rows),
        _outside_table(rows),
        "</div>",
        _notes_section(q),
        _slices_section(volume, lesions, lungs, key_slices, classes=list(q.lesion_ml)),
        _footer(q),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


class _RowIndex:
    """``q.rows()`` by ``(measure, region, class)``."""

    def __init__(self, rows: Iterable[dict]) -> None:
        self.rows = {(r["measure"], r["region"], r["class"]): r for r in rows}

    def get(self, measure: str, region: str, cls: str) -> dict | None:
        return self.rows.get((measure, region, cls))

    def cell(self, measure: str, region: str, cls: str, tag: str = "span") -> str:
        """The value and unit of one row, marked ``data-measure``; "–" when the row does not exist."""
        row = self.get(measure, region, cls)
        if row is None:
            return "–"
        return _measure_html(row, tag)


def _measure_html(row: dict, tag: str = "span") -> str:
    e = html.escape
    key = f"{row['measure']}|{row['region']}|{row['class']}"
    sub = "tspan" if tag == "tspan" else "span"
    unit = row["unit"]
    shown = unit if unit in ("ml", "%") else f"(scale {unit})"
    return (
        f'<{tag} data-measure="{e(key)}" data-unit="{e(unit)}"><{sub} class="v">{format_value(row["value"], unit)}'
        f'</{sub}> <{sub} class="u">{e(shown)}</{sub}></{tag}>'
    )


def _td(inner: str) -> str:
    return f"<td data-num>{inner}</td>" if inner != "–" else "<td>–</td>"


def _model_section(q: Quantification, card_summary: str, card_notes: str) -> str:
    e = html.escape
    out = [
        "<h2>What made the lesions</h2>",
        f'<p>Lesions from: <b data-text="model">{e(q.model or "unknown")}</b></p>',
    ]
    if card_summary:
        out.append(f'<p class="small">Model card: <span data-text="card">{e(card_summary)}</span></p>')
    if card_notes:
        out.append(f'<p class="small"><b>Model note:</b> <span data-text="card">{e(card_notes)}</span></p>')
    return "\n".join(out)


def _side_header(first: str) -> str:
    cells = "".join(f"<th>{e}</th>" for e in ("right lung", "left lung", "both lungs"))
    return f"<thead><tr><th>{html.escape(first)}</th>{cells}</tr></thead>"


def _volume_table(q: Quantification, rows: _RowIndex) -> str:
    e = html.escape
    out = ["<div><h2>Volumes and involvement</h2>", "<table>", _side_header("measure"), "<tbody>"]
    out.append("<tr><th>lung volume</th>" + "".join(_td(rows.cell("lung volume", s, "")) for s in SIDES) + "</tr>")
    for cls in [*q.lesion_ml, ALL_LESIONS]:
        css = ' class="sum"' if cls == ALL_LESIONS else ""
        for measure, label in (("lesion volume", "volume"), ("involvement", "share of the lung")):
            cells = "".join(_td(rows.cell(measure, s, cls)) for s in SIDES)
            out.append(f"<tr{css}><th>{e(cls)}: {label}</th>{cells}</tr>")
    out += ["</tbody></table>", "</div>"]
    return "\n".join(out)


def _severity_table(q: Quantification, rows: _RowIndex) -> str:
    e = html.escape
    out = [
        "<div><h2>Zones and severity</h2>",
        "<table><thead><tr><th>zone</th><th>lesion in the zone</th><th>zone score</th></tr></thead><tbody>",
    ]
    for zone in ZONES:
        inv = _td(rows.cell("zone involvement", zone, ALL_LESIONS))
        score = _td(rows.cell("zone score", zone, ALL_LESIONS))
        out.append(f"<tr><th>{e(zone)}</th>{inv}{score}</tr>")
    out.append(
        f'<tr class="sum"><th>severity score ({e(BOTH_LUNGS)})</th><td></td>'
        f"{_td(rows.cell('severity score', BOTH_LUNGS, ALL_LESIONS))}</tr>"
    )
    out += ["</tbody></table>", "</div>"]
    return "\n".join(out)


def _crosscheck_table(q: Quantification, rows: _RowIndex) -> str:
    e = html.escape
    out = ["<div><h2>HU-band cross-check (no model)</h2>"]
    if not q.hu_bands:
        out.append('<p class="note">HU bands not measured: the volume holds no Hounsfield units.</p></div>')
        return "\n".join(out)
    out += ["<table>", _side_header("share of the lung volume"), "<tbody>"]
    shown: set[str] = set()
    for band in q.hu_bands:
        partner = BAND_COUNTERPART.get(band)
        if partner in q.class_pct:
            cells = "".join(_td(rows.cell("involvement", s, partner)) for s in SIDES)
            out.append(f"<tr><th>model: {e(partner)}</th>{cells}</tr>")
            shown.add(partner)
        cells = "".join(
            _td(f"{rows.cell('HU band fraction', s, band)}<br>{rows.cell('HU band volume', s, band)}") for s in SIDES
        )
        out.append(f'<tr class="band"><th>HU band: {e(band)}</th>{cells}</tr>')
    out += ["</tbody></table>"]
    limits = "; ".join(f"{b} {lo:g} to {hi:g} HU" for b, (lo, hi) in HU_BANDS.items() if b in q.hu_bands)
    out.append(
        f'<p class="small" data-text="definition">HU bands: share of the lung volume with density in [low, high): '
        f"{e(limits)}. They need no model; vessels, airway walls and partial volume fall in them too, so expect "
        "the bands to exceed the model's classes, but a model far below its band deserves a look.</p>"
    )
    out.append("</div>")
    return "\n".join(out)


def _outside_table(rows: _RowIndex) -> str:
    out = [
        "<div><h2>Lesion outside the lung mask</h2>",
        "<table><tbody>",
        f"<tr><th>folded into the nearest lung (counted)</th>{_td(rows.cell('folded into lung', 'total', ALL_LESIONS))}"
        "</tr>",
    ]
    excluded = _td(rows.cell("excluded outside lung", OUTSIDE_LUNGS, ALL_LESIONS))
    out += [f"<tr><th>far from the lungs (excluded, not counted)</th>{excluded}</tr>", "</tbody></table>", "</div>"]
    return "\n".join(out)


def _chart_section(rows: _RowIndex) -> str:
    """Horizontal bars (full width = 100 %) of the lesion share per lung and per zone, each labelled with its value."""
    bars: list[tuple[str, dict | None, dict | None, str]] = []
    for side in SIDES:
        label = "both lungs" if side == "total" else f"{side} lung"
        bars.append((label, rows.get("involvement", side, ALL_LESIONS), None, "#555"))
    for zone in ZONES:
        bars.append(
            (zone, rows.get("zone involvement", zone, ALL_LESIONS), rows.get("zone score", zone, ALL_LESIONS), "#c60")
        )
    label_w, bar_w, value_w, bar_h, gap, gap_group = 92, 200, 180, 14, 5, 10
    width = label_w + bar_w + value_w
    height = len(bars) * (bar_h + gap) + gap_group + 4
    e = html.escape
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'font-family="sans-serif" font-size="11">',
        "<title>Lesion share of the lung volume per lung and per zone</title>",
    ]
    y = 2
    for k, (label, row, score, colour) in enumerate(bars):
        if k == len(SIDES):
            y += gap_group
        value = float(row["value"]) if row is not None else 0.0
        length = bar_w * min(max(value if math.isfinite(value) else 0.0, 0.0), 100.0) / 100.0
        base = y + bar_h - 3
        svg.append(f'<text x="{label_w - 4}" y="{base}" text-anchor="end">{e(label)}</text>')
        svg.append(f'<rect x="{label_w}" y="{y}" width="{bar_w}" height="{bar_h}" fill="#eee"/>')
        svg.append(f'<rect x="{label_w}" y="{y}" width="{length:.1f}" height="{bar_h}" fill="{colour}"/>')
        text = _measure_html(row, "tspan") if row is not None else "–"
        if score is not None:
            text += ", score " + _measure_html(score, "tspan")
        svg.append(f'<text x="{label_w + bar_w + 4}" y="{base}">{text}</text>')
        y += bar_h + gap
    svg.append("</svg>")
    return (
        "<div><h2>Involvement per lung and zone</h2>\n"
        + "\n".join(svg)
        + '\n<p class="small" data-text="caption">Bar length: lesion share of that lung or zone, the full bar being '
        "100 %; zone scores as in the severity table.</p></div>"
    )


def _notes_section(q: Quantification) -> str:
    if not q.notes:
        return ""
    items = "".join(f'<li data-text="note">{html.escape(n)}</li>' for n in q.notes)
    return f'<h2>How the numbers were made</h2><ul class="small">{items}</ul>'


def _slices_section(volume: CTVolume, lesions: np.ndarray, lungs: np.ndarray, n: int, classes: list[str]) -> str:
    if n <= 0:
        return ""
    indices = key_slice_indices(np.where(lungs > 0, lesions, 0), lungs, n)
    if not indices:
        return ""
    e = html.escape
    window = LUNG_WINDOW if volume.intensity == "HU" else DISPLAY_WINDOW
    nz = volume.shape[0]
    spacing_yx = (volume.spacing[1], volume.spacing[2])
    figures = []
    for z in indices:
        # only the lesions that were counted: quantify folds nearby ones into the lungs and excludes the rest
        counted = np.where(lungs[z] > 0, lesions[z], 0)
        png = overlay_png(volume.array[z], counted, lungs[z], spacing_yx, window=window)
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        caption = f"slice z = {z} of {nz} (patient right on image left)"
        figures.append(
            f'<figure><img src="{uri}" alt="{e(caption)}" data-z="{z}">'
            f'<figcaption data-text="caption">{e(caption)}</figcaption></figure>'
        )
    legend = "".join(
        f'<span class="sw" style="background:{_css_rgb(LESION_COLOURS[k])}"></span>{e(name)}'
        for k, name in LESION_CLASSES.items()
        if k != 0 and k in LESION_COLOURS and name in classes
    )
    legend += f'<span class="sw" style="background:{_css_rgb((0, 1, 1, 1))}"></span>lung outline'
    win = f"{window[0]:g} to {window[1]:g}" + (" HU" if volume.intensity == "HU" else "")
    return (
        "<h2>Key slices</h2>\n"
        f'<p class="small legend" data-text="caption">Most lesion area, spread over the lungs; z counts from 0 '
        f"(inferior); grey window {e(win)}; counted lesions (those excluded outside the lungs are not drawn) at "
        f"half opacity: {legend}</p>\n" + "\n".join(figures)
    )


def _footer(q: Quantification) -> str:
    e = html.escape
    return (
        f'<footer>napari-covidseg <span data-text="version">{e(software_version())}</span> · source: '
        f'<span data-text="source">{e(q.source or "unknown")}</span> · {e(RESEARCH_ONLY)}</footer>'
    )


def _css_rgb(rgba) -> str:
    r, g, b = (int(round(255 * float(c))) for c in rgba[:3])
    return f"rgb({r},{g},{b})"


def _resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label slice to ``size`` (width, height), sampling at pixel centres."""
    rows, cols = labels.shape
    out_w, out_h = size
    yi = np.minimum(((np.arange(out_h) + 0.5) * rows / out_h).astype(int), rows - 1)
    xi = np.minimum(((np.arange(out_w) + 0.5) * cols / out_w).astype(int), cols - 1)
    return labels[yi[:, None], xi[None, :]]
