"""Find the HU -> 8-bit mapping of the MedSeg (Inf-Net export) training slices from histogram landmarks.

The MedSeg slices are 8-bit JPEGs, already windowed and cropped around the lungs; no HU is left. The model trained on
them must see HU volumes windowed the same way at inference time, so we estimate the window [lo, hi] of

    8bit = clip((HU - lo) / (hi - lo) * 255, 0, 255)      i.e.  8bit = a * HU + b,  lo = -b / a,  hi = (255 - b) / a

by matching tissue landmarks: histogram peaks of aerated lung, fat, soft tissue and outside air, measured in HU on
real chest-CT volumes (COVID-CT-MD sample) and in 8-bit on the MedSeg slices. The different crops do not matter
because only peak *positions* are compared. Deterministic; single-threaded numpy/scipy, takes a few seconds.

    .venv/bin/python scripts/find_intensity_mapping.py      # writes docs/INTENSITY.md and docs/intensity_mapping.png

The last stdout line is JSON: {"hu_window": [lo, hi]}.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi
from scipy.signal import find_peaks

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MEDSEG = ROOT / "../shared/data/medseg_covid_semiseg_infnet/TrainingSet/MultiClassInfection-Train"
DEFAULT_VOLUMES = ROOT / "../shared/data/covid_ct_md_sample/volumes_256"

HU_MIN, HU_MAX = -1024, 3071  # histogram support (int16 CT, clipped)
BODY_HU = -500  # body = fill-holes(HU > -500); lung = body & HU < -500
LUNG_SLICE_FRACTION = 0.15  # use slices where lung > 15 % of the body area
HU_SIGMA = 5.0  # HU histogram smoothing (HU)
U8_SIGMA = 2.0  # pooled 8-bit histogram smoothing (levels)
U8_SIGMA_IMAGE = 1.5  # per-image 8-bit histogram smoothing (levels)
CORNER = 8  # corner patch size (px) for the outside-air level in the 8-bit slices
HU_RANGES = {"air": (-1020, -900), "lung": (-1000, -600), "fat": (-150, -60), "soft": (-50, 150)}
U8_LUNG_RANGE, U8_SOFT_RANGE = (10, 140), (150, 250)
FIT_LANDMARKS = ("lung", "soft")  # the two large, unambiguous peaks; fat and air are held-out checks
LABELS = {"air": "outside air", "lung": "aerated lung", "fat": "fat", "soft": "soft tissue / muscle"}


# ----------------------------------------------------------------------------------------------------------- helpers
def smooth(hist: np.ndarray, sigma: float) -> np.ndarray:
    return ndi.gaussian_filter1d(hist.astype(np.float64), sigma, mode="nearest")


def interior_peak(hist: np.ndarray, lo: int, hi: int, offset: int = 0, prominence: float = 0.0) -> int | None:
    """Position (in the original unit) of the highest local maximum strictly inside [lo, hi], or None."""
    i0, i1 = lo - offset, hi - offset
    peaks, _ = find_peaks(hist, prominence=prominence * hist[i0 : i1 + 1].max() if prominence else None)
    peaks = peaks[(peaks > i0) & (peaks < i1)]
    if peaks.size == 0:
        return None
    return int(peaks[np.argmax(hist[peaks])]) + offset


def hu_hist(values: np.ndarray) -> np.ndarray:
    v = np.clip(values.astype(np.int64), HU_MIN, HU_MAX) - HU_MIN
    return np.bincount(v, minlength=HU_MAX - HU_MIN + 1).astype(np.float64)


def rel(path: Path) -> str:
    return os.path.relpath(Path(path).resolve(), ROOT)


# ------------------------------------------------------------------------------------------------------ HU volumes
def analyse_volume(path: Path) -> dict:
    vol = np.asarray(nib.load(str(path)).dataobj).astype(np.int16)  # (x, y, z), LPS; z = axial
    body_vals, out_vals, n_slices = [], [], 0
    for z in range(vol.shape[2]):
        s = vol[:, :, z]
        fg = s > BODY_HU
        lab, n = ndi.label(fg)
        if n == 0:
            continue
        sizes = ndi.sum_labels(fg, lab, index=np.arange(1, n + 1))
        body = ndi.binary_fill_holes(lab == (1 + int(np.argmax(sizes))))  # largest component: drops table/clothes
        if body.sum() < 1000 or (body & (s < BODY_HU)).sum() <= LUNG_SLICE_FRACTION * body.sum():
            continue
        n_slices += 1
        body_vals.append(s[body])
        out = s[~body]
        out_vals.append(out[out > HU_MIN])  # -1024 = padding outside the reconstruction circle
    body_h, out_h = hu_hist(np.concatenate(body_vals)), hu_hist(np.concatenate(out_vals))
    return {"name": path.name.replace(".nii.gz", ""), "n_slices": n_slices, "body_hist": body_h, "out_hist": out_h}


def hu_landmarks(body_h: np.ndarray, out_h: np.ndarray) -> dict[str, int | None]:
    bs, os_ = smooth(body_h, HU_SIGMA), smooth(out_h, HU_SIGMA)
    marks = {k: interior_peak(bs, *HU_RANGES[k], offset=HU_MIN) for k in ("lung", "fat", "soft")}
    marks["air"] = interior_peak(os_, *HU_RANGES["air"], offset=HU_MIN)
    return marks


# ---------------------------------------------------------------------------------------------------- MedSeg 8-bit
def load_medseg(folder: Path) -> list[dict]:
    items = []
    for img_path in sorted((folder / "Imgs").glob("*.jpg"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem):
        img = np.asarray(Image.open(img_path).convert("L"))
        gt_path = folder / "GT" / f"{img_path.stem}.png"
        gt = np.asarray(Image.open(gt_path)) if gt_path.exists() else np.zeros_like(img)
        items.append({"name": img_path.stem, "img": img, "gt": gt})
    return items


def image_landmarks(img: np.ndarray) -> dict:
    """Per-slice 8-bit landmarks: lung peak, soft-tissue peak, a fat peak below it, outside-air corner level."""
    h = np.bincount(img.ravel(), minlength=256).astype(np.float64)
    hs = smooth(h / h.sum(), U8_SIGMA_IMAGE)
    lung = interior_peak(hs, *U8_LUNG_RANGE, prominence=0.02)
    soft = interior_peak(hs, *U8_SOFT_RANGE, prominence=0.02)
    fat = None
    if soft is not None:  # a separate fat peak 10..50 levels below the soft-tissue peak
        fat = interior_peak(hs, max(soft - 50, 1), soft - 10, prominence=0.02)
    # Outside air: corner patches that are flat (std < 6) and dark but not the 0-padding of non-square originals.
    # Most crops put subcutaneous fat/muscle in the corners; the few that show the air around the body pass this.
    k = CORNER
    air = [
        float(p.mean())
        for p in (img[:k, :k], img[:k, -k:], img[-k:, :k], img[-k:, -k:])
        if p.std() < 6 and 3 < p.mean() < 120
    ]
    return {"lung": lung, "soft": soft, "fat": fat, "air": float(np.median(air)) if air else None, "hist": h}


def shoulder(hs: np.ndarray, lo: int, hi: int) -> int | None:
    """Shoulder = strongest local minimum of the 2nd derivative inside [lo, hi] (a peak hidden on a slope)."""
    d2 = np.gradient(np.gradient(smooth(hs, 2.0)))
    return interior_peak(-d2, lo, hi)


# ------------------------------------------------------------------------------------------------------- fit + misc
def fit_line(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    hu = np.array([p[0] for p in pairs], dtype=np.float64)
    u8 = np.array([p[1] for p in pairs], dtype=np.float64)
    a, b = np.polyfit(hu, u8, 1)
    return float(a), float(b)


def window(a: float, b: float) -> tuple[float, float]:
    return -b / a, (255.0 - b) / a


def r10(x: float) -> int:
    return int(round(x / 10.0) * 10)


def map_hist(hu_h: np.ndarray, a: float, b: float) -> np.ndarray:
    """Histogram of 8-bit levels of HU data through 8bit = clip(a*HU + b); each 1-HU bin is spread uniformly."""
    cdf = np.concatenate([[0.0], np.cumsum(hu_h)])
    hu_edges = HU_MIN - 0.5 + np.arange(hu_h.size + 1)
    upper = (np.arange(255) + 0.5 - b) / a  # HU at the upper edge of levels 0..254
    f = np.interp(upper, hu_edges, cdf)
    return np.diff(np.concatenate([[0.0], f, [cdf[-1]]]))


def qstr(x: np.ndarray, fmt: str = "{:.0f}") -> str:
    if len(x) == 0:
        return "n/a"
    q = np.percentile(x, [0, 25, 50, 75, 100])
    return (
        f"{fmt.format(q[2])} (IQR {fmt.format(q[1])}..{fmt.format(q[3])}, range {fmt.format(q[0])}..{fmt.format(q[4])})"
    )


# ---------------------------------------------------------------------------------------------------------- figure
def draw_figure(path: Path, u8_h: np.ndarray, mapped_h: np.ndarray, marks: dict, a: float, b: float, win) -> None:
    W, H, L, R, T, B = 960, 560, 70, 20, 100, 70
    im = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(im)
    try:
        font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1
        font = small = ImageFont.load_default()
    # Both histograms as a fraction per level over 1..254 (the clipped end bins are reported in the legend).
    u = u8_h[1:255] / u8_h[1:255].sum()
    m = mapped_h[1:255] / mapped_h[1:255].sum()
    ymax = 1.1 * max(u.max(), m.max())

    def xy(level: float, y: float) -> tuple[float, float]:
        return L + level / 255.0 * (W - L - R), H - B - y / ymax * (H - T - B)

    d.rectangle([L, T, W - R, H - B], outline="black")
    for lvl in range(0, 256, 32):
        x, _ = xy(lvl, 0)
        d.line([x, H - B, x, H - B + 5], fill="black")
        d.text((x - 8, H - B + 8), str(lvl), fill="black", font=small)
        hu = (lvl - b) / a
        d.line([x, T, x, T - 5], fill="grey")
        d.text((x - 14, T - 20), f"{hu:.0f}", fill="grey", font=small)
    d.text((L + (W - L - R) / 2 - 90, H - B + 28), "8-bit intensity (MedSeg JPEG)", fill="black", font=font)
    d.text((L + (W - L - R) / 2 - 120, T - 48), "HU under the fitted mapping (top axis)", fill="grey", font=font)
    d.text((4, T - 40), "fraction/level", fill="black", font=small)
    for frac in np.linspace(0, ymax, 5)[:-1]:
        _, y = xy(0, frac)
        d.text((8, y - 7), f"{frac * 100:.2f}%", fill="black", font=small)
    colours = {"air": (120, 120, 120), "lung": (30, 120, 30), "fat": (200, 140, 0), "soft": (160, 30, 160)}
    for key, (_hu, lvl) in marks.items():
        if lvl is None:
            continue
        x, _ = xy(lvl, 0)
        for y0 in range(T, H - B, 12):
            d.line([x, y0, x, min(y0 + 6, H - B)], fill=colours[key], width=2)
        d.text((x + 3, T + 4 + 16 * list(colours).index(key)), LABELS[key], fill=colours[key], font=small)
    for arr, col, wdt in ((m, (230, 110, 0), 2), (u, (20, 60, 200), 3)):
        pts = [xy(i + 1, v) for i, v in enumerate(arr)]
        d.line(pts, fill=col, width=wdt)
    lx, ly = xy(64, 0)[0], T + 70
    sat_u, sat_m = u8_h[255] / u8_h.sum(), mapped_h[255] / mapped_h.sum()
    d.line([lx, ly + 8, lx + 30, ly + 8], fill=(20, 60, 200), width=3)
    d.text((lx + 36, ly), f"MedSeg train slices (50), 255: {sat_u * 100:.1f}%", fill="black", font=small)
    d.line([lx, ly + 28, lx + 30, ly + 28], fill=(230, 110, 0), width=2)
    d.text((lx + 36, ly + 20), f"CT body voxels (6 vols) mapped, 255: {sat_m * 100:.1f}%", fill="black", font=small)
    d.text((lx, ly + 42), f"8bit = {a:.4f} * HU + {b:.1f}", fill="black", font=small)
    d.text((lx, ly + 58), f"window [lo, hi] = [{win[0]}, {win[1]}] HU", fill="black", font=small)
    d.text((L, 8), "MedSeg 8-bit histogram vs CT HU histogram through the fitted window", fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.quantize(colors=64).save(path, optimize=True)


# ------------------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--medseg", type=Path, default=DEFAULT_MEDSEG, help="folder with Imgs/*.jpg and GT/*.png")
    p.add_argument("--volumes", type=Path, default=DEFAULT_VOLUMES, help="folder with HU *.nii.gz volumes")
    p.add_argument("--out", type=Path, default=ROOT / "docs/INTENSITY.md", help="markdown report")
    p.add_argument("--figure", type=Path, default=ROOT / "docs/intensity_mapping.png", help="PNG figure")
    args = p.parse_args(argv)

    # --- HU side
    vols = [analyse_volume(f) for f in sorted(args.volumes.glob("*.nii.gz"))]
    if not vols:
        raise SystemExit(f"no *.nii.gz in {args.volumes}")
    for v in vols:
        v["marks"] = hu_landmarks(v["body_hist"], v["out_hist"])
    # pooled: every volume weighs the same
    body_pool = sum(v["body_hist"] / v["body_hist"].sum() for v in vols)
    out_pool = sum(v["out_hist"] / v["out_hist"].sum() for v in vols)
    hu_marks = hu_landmarks(body_pool, out_pool)

    # --- 8-bit side
    items = load_medseg(args.medseg)
    if not items:
        raise SystemExit(f"no Imgs/*.jpg in {args.medseg}")
    per_img = [image_landmarks(it["img"]) | {"name": it["name"]} for it in items]
    u8_pool = sum(r["hist"] / r["hist"].sum() for r in per_img)  # every slice weighs the same
    u8s = smooth(u8_pool, U8_SIGMA)
    u8_lung = interior_peak(u8s, *U8_LUNG_RANGE)
    u8_soft = interior_peak(u8s, *U8_SOFT_RANGE)
    u8_fat_shoulder = shoulder(u8s, u8_soft - 50, u8_soft - 10)
    with_fat = [r for r in per_img if r["fat"] is not None]
    with_air = [r for r in per_img if r["air"] is not None and r["lung"] is not None]
    fats = np.array([r["fat"] for r in with_fat], dtype=float)
    fat_gap = np.array([r["soft"] - r["fat"] for r in with_fat], dtype=float)
    airs = np.array([r["air"] for r in with_air], dtype=float)
    air_gap = np.array([r["lung"] - r["air"] for r in with_air], dtype=float)
    # Primary 8-bit landmarks. Fat and air are seen only in subsets of slices (21 and 8 or so), so two variants are
    # reported as checks: the pooled-histogram shoulder for fat, and "pooled peak minus the median within-slice gap"
    # (which removes the subset's own window offset) for both.
    u8_marks: dict[str, float | None] = {
        "air": float(np.median(airs)) if airs.size else None,
        "lung": float(u8_lung),
        "fat": float(np.median(fats)) if fats.size else None,
        "soft": float(u8_soft),
    }
    rows = [  # (key, label, 8-bit value, how it was measured, in the lung/soft fit)
        ("air", "outside air", u8_marks["air"], f"median of flat dark corner patches, {airs.size} slices", False),
        (
            "air",
            "outside air (relative)",
            float(u8_lung - np.median(air_gap)) if air_gap.size else None,
            f"pooled lung peak - median within-slice gap lung-air ({np.median(air_gap) if air_gap.size else 0:.0f})",
            False,
        ),
        ("lung", "aerated lung", u8_marks["lung"], "pooled histogram peak in 10..140", True),
        ("fat", "fat", u8_marks["fat"], f"median of per-slice fat peaks, {fats.size} slices", False),
        ("fat", "fat (pooled shoulder)", u8_fat_shoulder, "min of 2nd derivative of pooled histogram", False),
        (
            "fat",
            "fat (relative)",
            float(u8_soft - np.median(fat_gap)) if fat_gap.size else None,
            f"pooled soft peak - median within-slice gap soft-fat ({np.median(fat_gap) if fat_gap.size else 0:.0f})",
            False,
        ),
        ("soft", "soft tissue / muscle", u8_marks["soft"], "pooled histogram peak in 150..250", True),
    ]

    # --- fit
    fit_keys = [k for k in FIT_LANDMARKS if hu_marks[k] is not None and u8_marks[k] is not None]
    a, b = fit_line([(hu_marks[k], u8_marks[k]) for k in fit_keys])
    all_keys = [k for k in HU_RANGES if hu_marks[k] is not None and u8_marks[k] is not None]
    a4, b4 = fit_line([(hu_marks[k], u8_marks[k]) for k in all_keys])
    lo, hi = window(a, b)
    win = (r10(lo), r10(hi))
    lo4, hi4 = window(a4, b4)

    # the same fit with each volume's own HU peaks instead of the pooled ones (sensitivity to the HU reference)
    vol_wins = []
    for v in vols:
        if all(v["marks"][k] is not None for k in fit_keys):
            av, bv = fit_line([(v["marks"][k], u8_marks[k]) for k in fit_keys])
            vol_wins.append((v["name"], *window(av, bv)))

    # per-slice windows from each slice's own lung + soft peaks (shows how much the export varies)
    d_hu = hu_marks["soft"] - hu_marks["lung"]
    per_lo, per_hi = [], []
    for r in per_img:
        if r["lung"] is not None and r["soft"] is not None and r["soft"] > r["lung"]:
            ai = (r["soft"] - r["lung"]) / d_hu
            bi = r["lung"] - ai * hu_marks["lung"]
            li, hi_i = window(ai, bi)
            per_lo.append(li)
            per_hi.append(hi_i)
    per_lo, per_hi = np.array(per_lo), np.array(per_hi)
    flat = [r["name"] for r in per_img if r["soft"] is None]
    no_soft = (
        f"Slices {', '.join(flat)} have no soft-tissue peak below 250 at all: their soft tissue sits at or near 255,"
        " i.e. a much narrower window than the average."
        if flat
        else ""
    )
    softs = np.array([r["soft"] for r in per_img if r["soft"] is not None], dtype=float)
    lungs = np.array([r["lung"] for r in per_img if r["lung"] is not None], dtype=float)

    # --- sanity checks
    sat_u8 = u8_pool[255] / u8_pool.sum()
    zero_u8 = u8_pool[0] / u8_pool.sum()
    hu_axis = np.arange(HU_MIN, HU_MAX + 1)
    above_hi = body_pool[hu_axis > hi].sum() / body_pool.sum()
    below_lo = body_pool[hu_axis < lo].sum() / body_pool.sum()
    per_vol_above = {v["name"]: v["body_hist"][hu_axis > hi].sum() / v["body_hist"].sum() for v in vols}
    per_img_sat = np.array([r["hist"][255] / r["hist"].sum() for r in per_img])
    gt_stats = {}
    for cls, label in ((1, "GGO"), (2, "consolidation")):
        pix = np.concatenate([it["img"][it["gt"] == cls] for it in items])
        meds = np.array([np.median(it["img"][it["gt"] == cls]) for it in items if (it["gt"] == cls).any()])
        gt_stats[label] = {
            "n_img": int(meds.size),
            "median_u8": float(np.median(pix)),
            "q25_u8": float(np.percentile(pix, 25)),
            "q75_u8": float(np.percentile(pix, 75)),
            "img_medians_hu": (meds - b) / a,
        }

    def to_hu(u8: float) -> float:
        return (u8 - b) / a

    ggo_hu, cons_hu = to_hu(gt_stats["GGO"]["median_u8"]), to_hu(gt_stats["consolidation"]["median_u8"])
    gt_verdict = (
        f"GGO median {'inside' if -750 <= ggo_hu <= -300 else 'OUTSIDE'} its range, consolidation median "
        f"{'above' if cons_hu > -300 else 'BELOW'} -300 HU"
    )

    # --- report
    table = [
        "| landmark | HU (pooled) | HU per volume | 8-bit | 8-bit measured as | in fit | fit predicts | residual 8-bit"
        " | residual HU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    resid: dict[str, tuple[float, float]] = {}
    for key, label, u8_k, how, in_fit in rows:
        hu_k = hu_marks[key]
        per_vol = ", ".join(str(v["marks"][key]) if v["marks"][key] is not None else "none" for v in vols)
        if hu_k is None or u8_k is None:
            table.append(f"| {label} | {hu_k} | {per_vol} | {u8_k} | {how} | no | - | - | - |")
            continue
        pred = a * hu_k + b
        resid[label] = (u8_k - pred, (u8_k - pred) / a)
        table.append(
            f"| {label} | {hu_k} | {per_vol} | {u8_k:.1f} | {how} | {'yes' if in_fit else 'no (check)'} | {pred:.1f}"
            f" | {resid[label][0]:+.1f} | {resid[label][1]:+.0f} |"
        )
    vol_rows = [
        "| volume | slices used | air | lung | fat | soft | body voxels > hi |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in vols:
        mk = v["marks"]
        fat = mk["fat"] if mk["fat"] is not None else "no peak (shoulder)"
        vol_rows.append(
            f"| {v['name']} | {v['n_slices']} | {mk['air']} | {mk['lung']} | {fat} | {mk['soft']}"
            f" | {per_vol_above[v['name']] * 100:.2f}% |"
        )

    def cell(x: float | None, fmt: str = "{}") -> str:
        return "" if x is None else fmt.format(x)

    img_rows = ["| slice | lung peak | fat peak | soft peak | air (corner) | % at 255 |", "|---|---|---|---|---|---|"]
    for r, sat in zip(per_img, per_img_sat):
        img_rows.append(
            f"| {r['name']} | {cell(r['lung'])} | {cell(r['fat'])} | {cell(r['soft'])} | {cell(r['air'], '{:.0f}')}"
            f" | {sat * 100:.1f} |"
        )
    ggo, cons = gt_stats["GGO"], gt_stats["consolidation"]
    cmd = ".venv/bin/python scripts/find_intensity_mapping.py"
    if args.medseg.resolve() != DEFAULT_MEDSEG.resolve():
        cmd += f" --medseg {rel(args.medseg)}"
    if args.volumes.resolve() != DEFAULT_VOLUMES.resolve():
        cmd += f" --volumes {rel(args.volumes)}"
    r_fat, r_air = resid.get("fat", (np.nan, np.nan)), resid.get("outside air", (np.nan, np.nan))
    checks = [v for k, v in resid.items() if k not in ("aerated lung", "soft tissue / muscle")]
    air_note = (
        f"lo = {lo:.0f} HU is {'below' if lo < -1024 else 'above'} the -1024 floor of CT: air (-1000 HU) maps to level"
        f" {a * -1000 + b:.0f}. In the MedSeg slices outside air is grey (corner level {qstr(airs)}), not black."
    )
    fig_link = os.path.relpath(args.figure.resolve(), args.out.resolve().parent)
    md = f"""# HU -> 8-bit mapping of the MedSeg training slices

*Generated by `scripts/find_intensity_mapping.py`; do not edit by hand. Regenerate (a few seconds, CPU) with:*

    {cmd}

## Result

**8bit = {a:.4f} * HU + {b:.1f}, i.e. the window [lo, hi] = [{win[0]}, {win[1]}] HU**
(unrounded {lo:.0f}, {hi:.0f}; width {hi - lo:.0f}, level {(lo + hi) / 2:.0f}), applied as
`8bit = clip((HU - lo) / (hi - lo) * 255, 0, 255)`.

Least squares on the two landmarks that are large, unambiguous peaks in both data sets
({", ".join(LABELS[k] for k in fit_keys)}); two points fix the line, so their residuals are 0 by construction.
Fat and outside air are held out as checks (table below). A least-squares fit on all {len(all_keys)} primary
landmarks gives 8bit = {a4:.4f} * HU + {b4:.1f}, window [{r10(lo4)}, {r10(hi4)}] HU.

{air_note}

This is one *average* window. The export was **not** the same for every slice (see "Spread" below): a single window
reproduces the typical slice, not each one.

## How it was found

- **HU side** ({len(vols)} COVID-CT-MD volumes in `{rel(args.volumes)}`: HU, 2 mm slices, in-plane 2x2-averaged).
  Per axial slice: body = fill-holes(largest connected component of HU > {BODY_HU}); lung = body & HU < {BODY_HU}.
  Only slices where lung > {LUNG_SLICE_FRACTION:.0%} of the body area are used (lung-level slices, like the MedSeg
  ones). Histogram of the body voxels (1 HU bins, Gaussian smoothing sigma {HU_SIGMA:g} HU), each volume normalised,
  then pooled; the highest interior local maximum in lung {HU_RANGES["lung"]}, fat {HU_RANGES["fat"]} and soft
  tissue {HU_RANGES["soft"]} HU. Outside air = the peak in {HU_RANGES["air"]} HU of the voxels outside the body
  (the -1024 padding outside the reconstruction circle excluded).
- **8-bit side** ({len(items)} MedSeg JPEGs in `{rel(args.medseg)}/Imgs`). The histogram of each slice is
  normalised, then pooled (every slice weighs the same) and smoothed (sigma {U8_SIGMA:g} levels): the aerated-lung
  peak (10..140) and the soft-tissue peak (150..250, below the 255 clip) are clear. Fat shows as its own peak
  10..50 levels below the soft-tissue peak in {fats.size} slices (per-slice histogram, sigma {U8_SIGMA_IMAGE:g},
  prominence >= 2 % of max) and as a shoulder (at {u8_fat_shoulder}) in the pooled histogram. Outside air is seen
  only where a crop reaches past the body: {CORNER}x{CORNER} corner patches that are flat (std < 6) and dark
  (3 < mean < 120; exact 0 is the padding of non-square originals, not air), found in {airs.size} slices. Most
  crops have subcutaneous fat or muscle in their corners instead.

## Landmarks

{chr(10).join(table)}

The fat landmark (median per-slice peak {u8_marks["fat"]}) agrees with the lung/soft line to {r_fat[0]:+.1f} levels
({r_fat[1]:+.0f} HU), the pooled shoulder to {resid.get("fat (pooled shoulder)", (np.nan,))[0]:+.1f} levels; the
within-slice gap soft - fat (median {np.median(fat_gap):.0f} levels for {hu_marks["soft"] - hu_marks["fat"]} HU,
slope {np.median(fat_gap) / (hu_marks["soft"] - hu_marks["fat"]):.3f} vs fitted {a:.3f}) is smaller than the fit
predicts, likely because the visible fat is a thin subcutaneous strip at the crop corners (partial volume with
muscle pulls its peak up). Outside air agrees to {r_air[0]:+.1f} levels ({r_air[1]:+.0f} HU); its slices are
brighter than average (their lung peaks: median {np.median([r["lung"] for r in with_air]) if with_air else 0:.0f} vs
pooled {u8_lung}), and placed relative to their own lung peak it agrees to
{resid.get("outside air (relative)", (np.nan,))[0]:+.1f} levels.

Per volume (HU, same method). Fitting with each volume's own lung/soft peaks instead of the pooled ones gives
windows {", ".join(f"[{r10(w[1])}, {r10(w[2])}]" for w in vol_wins)} HU: the choice of HU reference moves lo and hi
by a few tens of HU.

{chr(10).join(vol_rows)}

## Sanity checks

- **Saturation.** {sat_u8 * 100:.1f} % of MedSeg pixels are 255 (per slice {qstr(per_img_sat * 100, "{:.1f}")} %);
  {above_hi * 100:.1f} % of the CT body voxels on lung slices are above hi = {hi:.0f} HU (per volume above). The MedSeg
  crops hold less chest wall/spine than a whole body slice and JPEG ringing moves bone edges, so only the order of
  magnitude is comparable; it agrees. {zero_u8 * 100:.2f} % of MedSeg pixels are 0 (padding) vs
  {below_lo * 100:.2f} % of CT body voxels below lo = {lo:.0f} HU.
- **Lesions (GT).** GGO: median 8-bit {ggo["median_u8"]:.0f} (IQR {ggo["q25_u8"]:.0f}..{ggo["q75_u8"]:.0f}) ->
  **{to_hu(ggo["median_u8"]):.0f} HU** (IQR {to_hu(ggo["q25_u8"]):.0f}..{to_hu(ggo["q75_u8"]):.0f}); per-slice
  medians {qstr(ggo["img_medians_hu"])} HU over {ggo["n_img"]} slices. Consolidation: median 8-bit
  {cons["median_u8"]:.0f} (IQR {cons["q25_u8"]:.0f}..{cons["q75_u8"]:.0f}) -> **{to_hu(cons["median_u8"]):.0f} HU**
  (IQR {to_hu(cons["q25_u8"]):.0f}..{to_hu(cons["q75_u8"]):.0f}); per-slice medians {qstr(cons["img_medians_hu"])}
  HU over {cons["n_img"]} slices. Expected: GGO about -750..-300 HU, consolidation above about -300 HU:
  {gt_verdict}.
- **Spread.** Per-slice peaks: lung {qstr(lungs)}, soft tissue {qstr(softs)} (8-bit). Matching each slice's own
  lung and soft-tissue peaks to the pooled HU peaks gives a per-slice window: lo {qstr(per_lo)} HU,
  hi {qstr(per_hi)} HU over {per_lo.size} slices. Per-slice lung peaks are biased upward where diseased lung
  dominates, but the soft-tissue peak moves as well, so the window really varies between slices (the MedSeg images
  were made from JPEGs from different sources, each with its own display window).
  {no_soft}

![MedSeg 8-bit histogram vs CT HU histogram through the fitted window]({fig_link})

Blue: MedSeg 8-bit histogram (50 slices, each normalised). Orange: the HU histogram of the CT body voxels on
lung slices (6 volumes) mapped through the fitted window. Both as fraction per level over levels 1..254. Top axis:
the HU of each 8-bit level under the fit. Dashed: the primary 8-bit landmarks. The CT curve has a much larger fat
peak because whole body slices hold far more subcutaneous fat than the lung-centred MedSeg crops; its peaks are
sharper because it is one clean scanner per volume, not 50 differently windowed JPEGs.

## Limits

- Two landmarks carry the fit; fat and air check it but come from subsets of slices. The pooled peaks average over
  slices whose windows differ (spread above), so the window is an average: good to about
  +-{max(abs(v[1]) for v in checks):.0f} HU at the check landmarks, and worse for any single slice.
- The HU reference is another population: 6 COVID-CT-MD volumes (Siemens, 110 kVp, in-plane 2x2-averaged). The
  MedSeg patients are sicker (less aerated lungs, so their aerated-lung peak may sit above -880 HU) and were scanned
  on other machines. Fat reads a little lower at 110 kVp than at 120 kVp, and one volume shows no fat peak.
- The linear-window form is assumed; a gamma or otherwise curved export would show only as a bend that 2-4
  landmarks cannot rule out. JPEG compression adds a few levels of noise.
- The outside-air level comes from 8x8 corners of the few crops that reach outside the body; a dark corner that is
  lung would bias it (the patches must be flat to avoid that; the 8 found in the 50 MedSeg training slices were
  checked by eye).

## Per slice (8-bit)

{chr(10).join(img_rows)}
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md)
    mapped = map_hist(body_pool, a, b)
    fig_marks = {k: (hu_marks[k], u8_marks[k]) for k in HU_RANGES}
    draw_figure(args.figure, u8_pool, mapped, fig_marks, a, b, win)

    print(f"HU landmarks (pooled): {hu_marks}")
    print(f"8-bit landmarks: { ({k: None if v is None else round(v, 1) for k, v in u8_marks.items()}) }")
    print(f"fit on {fit_keys}: 8bit = {a:.4f} * HU + {b:.2f}; window [{lo:.0f}, {hi:.0f}]")
    print(f"fit on {all_keys}: 8bit = {a4:.4f} * HU + {b4:.2f}; window [{lo4:.0f}, {hi4:.0f}]")
    for k, (r8, rh) in resid.items():
        print(f"residual {k}: {r8:+.1f} levels ({rh:+.0f} HU)")
    print(f"GGO median -> {to_hu(ggo['median_u8']):.0f} HU; consolidation median -> {to_hu(cons['median_u8']):.0f} HU")
    print(f"wrote {rel(args.out)} and {rel(args.figure)}")
    print(json.dumps({"hu_window": list(win)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
