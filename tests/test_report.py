"""HTML report and `covidseg quantify`: a self-contained page whose every number is a named measure of q.rows()."""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
import re
from html.parser import HTMLParser

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from napari_covidseg.analysis.quantify import Quantification, quantify
from napari_covidseg.analysis.report import (
    IMAGE_WIDTH,
    RESEARCH_ONLY,
    key_slice_indices,
    overlay_png,
    render_report,
)
from napari_covidseg.cli import main
from napari_covidseg.constants import CONSOLIDATION, GGO, LESION_COLOURS
from napari_covidseg.sample import make_phantom, write_sample

SHAPE = (24, 128, 128)
NUMBER = re.compile(r"\d+(?:\.\d+)?")
VOID = {"img", "br", "meta", "link", "input", "hr", "source", "wbr"}
# data-text kinds: labelled free text that may hold numbers which are not measures (never inside a table or SVG).
FREE_TEXT = {"name", "date", "model", "card", "scheme", "definition", "caption", "note", "version", "source"}


# ---------------------------------------------------------------------------------------------------- HTML checks


class Page(HTMLParser):
    """Parses the report into text chunks with their open elements, plus the images and measure elements."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.serial = 0
        self.stack: list[tuple[str, dict, int]] = []
        self.chunks: list[tuple[str, list[tuple[str, dict, int]]]] = []
        self.images: list[dict] = []
        self.tags: list[tuple[str, dict]] = []
        self.measures: dict[int, dict] = {}  # serial -> {"key", "unit", "value": [...], "other": [...]}
        self.feed(text)
        self.close()

    def _open(self, tag: str, attrs: list) -> tuple[str, dict, int]:
        self.serial += 1
        entry = (tag, dict(attrs), self.serial)
        self.tags.append((tag, entry[1]))
        if tag == "img":
            self.images.append(entry[1])
        if "data-measure" in entry[1]:
            self.measures[self.serial] = {
                "key": entry[1]["data-measure"],
                "unit": entry[1].get("data-unit"),
                "value": [],
                "other": [],
            }
        return entry

    def handle_starttag(self, tag, attrs):
        entry = self._open(tag, attrs)
        if tag not in VOID:
            self.stack.append(entry)

    def handle_startendtag(self, tag, attrs):
        self._open(tag, attrs)

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        if not data.strip():
            return
        self.chunks.append((data, list(self.stack)))
        owner = next((e for e in reversed(self.stack) if "data-measure" in e[1]), None)
        if owner is not None:
            is_value = self.stack[-1][1].get("class") == "v" and self.stack[-1][2] != owner[2]
            self.measures[owner[2]]["value" if is_value else "other"].append(data)

    def visible_text(self) -> str:
        skip = {"style", "title", "head", "script"}
        return " ".join(d for d, stack in self.chunks if not any(t in skip for t, _, _ in stack))


def unnamed_numbers(page: Page) -> list[str]:
    """Numbers in the visible text that are neither inside a measure element nor in allowed labelled free text."""
    problems = []
    for data, stack in page.chunks:
        tags = [t for t, _, _ in stack]
        if any(t in ("style", "title", "head") for t in tags) or not NUMBER.search(data):
            continue
        owner = next((a for _, a, _ in reversed(stack) if "data-measure" in a or "data-text" in a), None)
        if owner is not None and "data-measure" in owner:
            continue
        in_figure = "table" in tags or "svg" in tags
        if owner is not None and owner["data-text"] in FREE_TEXT and not in_figure:
            continue
        problems.append(data.strip())
    return problems


def wrong_measures(page: Page, q) -> list[str]:
    """Measure elements whose key is no row of q, whose unit differs, or whose shown value is not the row's."""
    rows = {f"{r['measure']}|{r['region']}|{r['class']}": r for r in q.rows()}
    problems = []
    for m in page.measures.values():
        row = rows.get(m["key"])
        if row is None:
            problems.append(f"{m['key']}: no such row")
            continue
        if m["unit"] != row["unit"]:
            problems.append(f"{m['key']}: unit {m['unit']!r} != {row['unit']!r}")
        shown = "".join(m["value"]).strip()
        if not re.fullmatch(r"\d+(\.\d+)?", shown):
            problems.append(f"{m['key']}: value {shown!r} is not one number")
            continue
        decimals = len(shown.split(".")[1]) if "." in shown else 0
        if isinstance(row["value"], (int, np.integer)):
            ok = shown == str(int(row["value"]))
        else:
            ok = abs(float(shown) - float(row["value"])) <= 0.5 * 10.0**-decimals + 1e-9
        if not ok:
            problems.append(f"{m['key']}: shows {shown}, row value {row['value']}")
        other = " ".join(m["other"])
        if row["unit"] not in other:
            problems.append(f"{m['key']}: unit {row['unit']!r} not shown next to the value ({other!r})")
        if not set(NUMBER.findall(other)) <= set(NUMBER.findall(row["unit"])):
            problems.append(f"{m['key']}: extra numbers beside the value: {other!r}")
    return problems


# -------------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def measured():
    phantom = make_phantom(shape=SHAPE)
    volume = phantom.volume("phantom")
    q, lungs = quantify(volume, phantom.lesions, lungs=phantom.lungs, model="mask: phantom lesions")
    return phantom, volume, q, lungs


@pytest.fixture(scope="module")
def report(measured, tmp_path_factory):
    phantom, volume, q, lungs = measured
    path = tmp_path_factory.mktemp("report") / "report.html"
    out = render_report(
        q,
        volume,
        phantom.lesions,
        lungs,
        path,
        card_summary="segmentation, input 256x256",
        card_notes="demo weights",
        key_slices=4,
    )
    assert out == path
    text = path.read_text(encoding="utf-8")
    return path, text, Page(text)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return write_sample(tmp_path_factory.mktemp("sample"), shape=SHAPE)


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------------------------------------- report


def test_report_is_one_self_contained_page(report, measured):
    path, text, page = report
    _, _, q, _ = measured
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # atomic write left no temporary file
    tags = [t for t, _ in page.tags]
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    assert not re.search(r"\son\w+\s*=", text)  # no inline event handlers either
    assert all(a["src"].startswith("data:image/png;base64,") for a in page.images)
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in text
    visible = page.visible_text()
    assert RESEARCH_ONLY in visible
    assert q.name in visible and q.model in visible and "demo weights" in visible
    assert re.search(r"\d{4}-\d{2}-\d{2}", visible)  # the date
    assert "svg" in tags and "<title>" in text


def test_key_slices_are_pngs_with_the_physical_aspect(report, measured):
    _, _, page = report
    phantom, volume, _, lungs = measured
    assert len(page.images) == 4
    expected_z = key_slice_indices(phantom.lesions, lungs, 4)
    assert [int(a["data-z"]) for a in page.images] == expected_z
    ny, nx = volume.shape[1:]
    for attrs in page.images:
        data = base64.b64decode(attrs["src"].split(",", 1)[1])
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "PNG" and im.mode == "RGB"
            width, height = im.size
        assert width == IMAGE_WIDTH
        assert height == round(IMAGE_WIDTH * ny * volume.spacing[1] / (nx * volume.spacing[2]))
    captions = [d for d, stack in page.chunks if any(t == "figcaption" for t, _, _ in stack)]
    assert captions == [f"slice z = {z} of {SHAPE[0]} (patient right on image left)" for z in expected_z]


def test_every_number_shown_is_a_named_measure(report, measured):
    _, text, page = report
    _, _, q, _ = measured
    assert unnamed_numbers(page) == []
    assert wrong_measures(page, q) == []
    shown = {m["key"] for m in page.measures.values()}
    required = {f"lung volume|{s}|" for s in ("right", "left", "total")}
    required |= {f"involvement|{s}|all lesions" for s in ("right", "left", "total")}
    required |= {f"lesion volume|total|{c}" for c in q.lesion_ml}
    required |= {f"HU band fraction|total|{b}" for b in q.hu_bands}
    required |= {"severity score|both lungs|all lesions", "folded into lung|total|all lesions"}
    required |= {"excluded outside lung|outside lungs|all lesions"}
    required |= {f"zone involvement|{z}|all lesions" for z in q.zone_pct}
    assert required <= shown
    # The chart labels its bars with measures too.
    svg_keys = {m["key"] for s, m in page.measures.items() if _inside(page, s, "svg")}
    assert {"involvement|right|all lesions", "involvement|left|all lesions"} <= svg_keys
    assert {f"zone involvement|{z}|all lesions" for z in q.zone_pct} <= svg_keys


def _inside(page: Page, serial: int, tag: str) -> bool:
    for _, stack in page.chunks:
        serials = [s for _, _, s in stack]
        if serial in serials:
            return tag in [t for t, _, s in stack if s < serial]
    return False


def test_the_number_check_catches_unnamed_and_wrong_numbers(report, measured):
    """The check above is meaningful: a stray number in a table, or a measure showing a wrong value, is caught."""
    _, text, _ = report
    _, _, q, _ = measured
    stray = text.replace("<th>right upper</th>", "<th>right upper 7</th>", 1)
    assert stray != text and unnamed_numbers(Page(stray)) == ["right upper 7"]
    severity = f'<span class="v">{q.severity}</span> <span class="u">(scale 0-25)</span>'
    assert severity in text
    wrong = text.replace(severity, f'<span class="v">{q.severity + 1}</span> <span class="u">(scale 0-25)</span>')
    assert any(p.startswith("severity score|") for p in wrong_measures(Page(wrong), q))
    caption_in_table = text.replace("<th>lung volume</th>", '<th data-text="caption">lung volume 3</th>', 1)
    assert unnamed_numbers(Page(caption_in_table)) == ["lung volume 3"]


def test_overlay_blends_the_lesion_colour_and_outlines_the_lung(measured):
    from scipy import ndimage

    phantom, volume, _, lungs = measured
    sy, sx = volume.spacing[1:]
    ny, nx = volume.shape[1:]
    for cls in (GGO, CONSOLIDATION):
        mask = phantom.lesions == cls
        interior = ndimage.binary_erosion(mask, structure=np.ones((1, 5, 5), bool))
        interior &= ndimage.binary_erosion(lungs > 0, structure=np.ones((1, 7, 7), bool))
        z, y, x = (int(v) for v in np.argwhere(interior)[0])
        png = overlay_png(volume.array[z], phantom.lesions[z], lungs[z], (sy, sx))
        with Image.open(io.BytesIO(png)) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=float)
        h, w = rgb.shape[:2]
        r, g, b = rgb[int((y + 0.5) * h / ny), int((x + 0.5) * w / nx)]
        colour = np.array(LESION_COLOURS[cls][:3]) * 255.0
        # pixel = 0.5 * grey + 0.5 * colour, so channel differences are half the colour's, whatever the grey
        assert abs((r - b) - 0.5 * (colour[0] - colour[2])) <= 2.0, (cls, r, g, b)
        assert abs((g - b) - 0.5 * (colour[1] - colour[2])) <= 2.0, (cls, r, g, b)
        assert b <= 0.5 * 255 + 0.5 * colour[2] + 1
        outline = np.all(rgb == (0, 255, 255), axis=2)
        assert outline.any() and outline.mean() < 0.05  # a thin line
    # Lung without lesion stays grey.
    z = phantom.lesions.shape[0] - 3
    png = overlay_png(volume.array[z], np.zeros_like(phantom.lesions[z]), np.zeros_like(lungs[z]), (sy, sx))
    with Image.open(io.BytesIO(png)) as im:
        rgb = np.asarray(im.convert("RGB"))
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])


@pytest.mark.parametrize(
    ("shape", "spacing", "size"),
    [((40, 20), (1.0, 1.0), (256, 512)), ((40, 20), (0.5, 1.0), (256, 256)), ((10, 30), (2.0, 1.0), (256, 171))],
)
def test_overlay_aspect_follows_the_spacing(shape, spacing, size):
    ct = np.full(shape, -800.0, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    with Image.open(io.BytesIO(overlay_png(ct, labels, labels, spacing))) as im:
        assert im.size == size


def test_key_slices_prefer_lesions_spread_over_the_lungs():
    lungs = np.zeros((30, 8, 8), dtype=np.uint8)
    lungs[3:27, 2:6, 2:6] = 1
    lesions = np.zeros_like(lungs)
    lesions[5, 3:5, 3:5] = 1  # lower third: the only lesion slice
    lesions[12, 3:4, 3:4] = 1  # middle third: the smaller one ...
    lesions[14, 3:6, 3:6] = 2  # ... and the larger one
    lesions[21, 2:6, 2:6] = 1  # upper third, largest of all
    lesions[22, 3:5, 3:5] = 1  # upper third, next to the largest
    lesions[25, 3:4, 3:4] = 1  # upper third, small but apart
    assert key_slice_indices(lesions, lungs, 3) == [5, 14, 21]
    # In quarters the third quarter (15..20) has no lesion: it takes the best lesion slice that is not next to one
    # already chosen (25, not 22 or 12).
    assert key_slice_indices(lesions, lungs, 4) == [5, 14, 21, 25]
    # No lesion: evenly spread mid-lung slices; never more slices than the lungs span; n = 0 gives none.
    empty = np.zeros_like(lesions)
    assert key_slice_indices(empty, lungs, 3) == [6, 14, 22]
    assert len(key_slice_indices(empty, lungs, 100)) == 24
    assert key_slice_indices(lesions, lungs, 0) == []


def test_report_without_lesions_or_slices(measured, tmp_path):
    phantom, volume, _, lungs = measured
    empty = np.zeros_like(phantom.lesions)
    q, lungs = quantify(volume, empty, lungs=phantom.lungs, model="nothing")
    text = render_report(q, volume, empty, lungs, tmp_path / "r.html", key_slices=2).read_text(encoding="utf-8")
    page = Page(text)
    assert len(page.images) == 2 and unnamed_numbers(page) == [] and wrong_measures(page, q) == []
    text = render_report(q, volume, empty, lungs, tmp_path / "r.html", key_slices=0).read_text(encoding="utf-8")
    assert "<img" not in text


# ------------------------------------------------------------------------------------------------------------- CLI


def test_cli_quantify_with_a_mask_writes_csv_report_and_lungs(sample, tmp_path, capsys):
    out_csv, out_html, out_lungs = tmp_path / "q.csv", tmp_path / "q.html", tmp_path / "lungs.nii.gz"
    argv = ["quantify", sample["ct"], "--mask", sample["lesions"], "--csv", out_csv, "--report", out_html]
    code, out, err = run([*argv, "--lungs-out", out_lungs], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert 0 <= result["severity"] <= 25 and result["model"] == "mask: covidseg_phantom_lesions.nii.gz"
    assert "severity score" in err and "wrote" in err
    with open(out_csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and set(rows[0]) == {"measure", "region", "class", "value", "unit"}
    severity = [r for r in rows if r["measure"] == "severity score"]
    assert [int(r["value"]) for r in severity] == [result["severity"]]
    text = out_html.read_text(encoding="utf-8")
    assert RESEARCH_ONLY in text and "covidseg_phantom_ct" in text
    lungs = nib.load(str(out_lungs))
    assert lungs.shape == nib.load(str(sample["ct"])).shape
    assert set(np.unique(np.asarray(lungs.dataobj)).tolist()) == {0, 1, 2}


def test_cli_quantify_refuses_a_mask_of_another_shape(sample, tmp_path, capsys):
    mask = tmp_path / "small.npy"
    np.save(mask, np.zeros((4, 16, 16), dtype=np.uint8))
    code, out, err = run(["quantify", sample["ct"], "--mask", mask], capsys)
    assert code == 2 and out == ""
    assert "does not match the CT" in err and len(err.strip().splitlines()) == 1


def test_cli_quantify_refuses_a_png(tmp_path, capsys):
    png = tmp_path / "slice.png"
    Image.fromarray(np.full((64, 64), 100, dtype=np.uint8)).save(png)
    code, out, err = run(["quantify", png, "--report", tmp_path / "r.html"], capsys)
    assert code == 2 and out == ""
    line = err.strip().splitlines()[-1]
    assert line.startswith("covidseg: error:") and "Hounsfield" in line
    assert not (tmp_path / "r.html").exists()


def test_cli_quantify_segments_with_the_bundled_unet(sample, tmp_path, capsys):
    code, out, err = run(["quantify", sample["ct"], "--device", "cpu", "--report", tmp_path / "r.html"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["model"] == "unet" and "severity" in result
    assert "ground-glass opacity" in result["lesion_ml"]
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "unet" in text and "Model card:" in text
    # The page of a segmented scan (other classes, a computed lung mask, folded lesion) passes the same checks.
    q = Quantification(**{f.name: result[f.name] for f in dataclasses.fields(Quantification)})
    page = Page(text)
    assert unnamed_numbers(page) == [] and wrong_measures(page, q) == []
