"""Sanity check of the bundled MedSeg-trained segmentation models on the 6 real COVID-CT-MD volumes.

For each HU volume (class from the file name: COVID-19_*, CAP_* = common pneumonia, Normal_*) and each bundled
segmentation model whose card says it was trained on MedSeg, segment the whole volume on the CPU and report the lung
volume (classical lung mask, ``napari_covidseg.analysis.lungmask``), the predicted lesion volume per class, the
lesion fraction of the lung and the share of predicted lesion voxels outside the lung mask. No reference masks exist
for these volumes, so this is a plausibility check (do abnormal scans get lesions and normal scans almost none?),
not an accuracy measure. Writes docs/REAL_VOLUMES.md and prints the table.

    .venv/bin/python scripts/real_volume_check.py               # one CPU thread, writes docs/REAL_VOLUMES.md
    .venv/bin/python scripts/real_volume_check.py --no-write    # print only
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from napari_covidseg.analysis.lungmask import LEFT_LUNG, RIGHT_LUNG, lung_mask
from napari_covidseg.constants import CONSOLIDATION, GGO, LESION_CLASSES
from napari_covidseg.inference.segment import segment_volume
from napari_covidseg.io import load_ct
from napari_covidseg.models.checkpoint import Checkpoint, list_checkpoints

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "covid_ct_md_sample" / "volumes_256"
OUT = ROOT / "docs" / "REAL_VOLUMES.md"
CLASS_PREFIXES = (("COVID-19_", "COVID-19"), ("CAP_", "common pneumonia"), ("Normal_", "normal"))
ABNORMAL = ("COVID-19", "common pneumonia")
NORMAL_MAX_PERCENT = 1.0  # "close to none": a normal scan's lesion fraction of lung below this
GGO_NAME, CONS_NAME = LESION_CLASSES[GGO], LESION_CLASSES[CONSOLIDATION]


@dataclass
class LungRow:
    """Lung mask of one volume."""

    file: str
    label: str
    right_ml: float
    left_ml: float
    seconds: float

    @property
    def total_ml(self) -> float:
        return self.right_ml + self.left_ml


@dataclass
class Row:
    """One model on one volume."""

    model: str
    file: str
    label: str
    lung_ml: float
    class_ml: dict[str, float] = field(default_factory=dict)
    lesion_in_lung_pct: float = 0.0
    lesion_outside_pct: float | None = None  # None when no lesion voxel was predicted
    seconds: float = 0.0

    def ml(self, name: str) -> float:
        return self.class_ml.get(name, 0.0)

    @property
    def other_ml(self) -> float:
        return sum(v for k, v in self.class_ml.items() if k not in (GGO_NAME, CONS_NAME))


def scan_class(path: Path) -> str:
    """Diagnosis class from the file-name prefix."""
    for prefix, label in CLASS_PREFIXES:
        if path.name.startswith(prefix):
            return label
    raise ValueError(f"{path.name}: no class prefix ({', '.join(p for p, _ in CLASS_PREFIXES)})")


def medseg_models() -> list[Checkpoint]:
    """Bundled segmentation checkpoints whose card says they were trained on MedSeg."""
    return [
        c
        for c in list_checkpoints(task="segmentation")
        if c.bundled and "medseg" in str(c.card.training.get("data", "")).lower()
    ]


def measure(model: str, path: Path, label: str, lungs: np.ndarray, seg, voxel_ml: float) -> Row:
    """Volumes and fractions of one segmentation against the lung mask."""
    in_lung = lungs > 0
    lesion = seg.labels > 0
    n_lung, n_lesion = int(in_lung.sum()), int(lesion.sum())
    n_inside = int((lesion & in_lung).sum())
    counts = np.bincount(seg.labels.ravel(), minlength=seg.card.num_classes)
    class_ml = {c["name"]: float(counts[c["id"]]) * voxel_ml for c in seg.card.classes if c["id"] != 0}
    return Row(
        model=model,
        file=path.name,
        label=label,
        lung_ml=n_lung * voxel_ml,
        class_ml=class_ml,
        lesion_in_lung_pct=100.0 * n_inside / n_lung if n_lung else float("nan"),
        lesion_outside_pct=100.0 * (n_lesion - n_inside) / n_lesion if n_lesion else None,
        seconds=seg.seconds,
    )


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def lung_table(lungs: list[LungRow]) -> str:
    lines = [
        "| file | class | right lung ml | left lung ml | total ml | seconds |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in lungs:
        lines.append(
            f"| {r.file} | {r.label} | {r.right_ml:.0f} | {r.left_ml:.0f} | {r.total_ml:.0f} | {r.seconds:.1f} |"
        )
    return "\n".join(lines)


def results_table(rows: list[Row]) -> str:
    other = any(r.other_ml > 0 for r in rows)
    head = "| model | file | class | lung ml | GGO ml | consolidation ml |" + (" other ml |" if other else "")
    head += " lesion % of lung | lesion outside lung % | seconds |"
    sep = "|---|---|---|---:|---:|---:|" + ("---:|" if other else "") + "---:|---:|---:|"
    lines = [head, sep]
    for r in rows:
        line = f"| {r.model} | {r.file} | {r.label} | {r.lung_ml:.0f} | {r.ml(GGO_NAME):.1f} | {r.ml(CONS_NAME):.1f} |"
        line += f" {r.other_ml:.1f} |" if other else ""
        line += f" {_pct(r.lesion_in_lung_pct)} | {_pct(r.lesion_outside_pct)} | {r.seconds:.1f} |"
        lines.append(line)
    return "\n".join(lines)


def reading(rows: list[Row], models: list[str]) -> list[str]:
    """One verdict per model on "abnormal scans show lesions, normal scans close to none", from the numbers only."""
    out = []
    for model in models:
        mine = [r for r in rows if r.model == model]
        abnormal = [r.lesion_in_lung_pct for r in mine if r.label in ABNORMAL]
        normal = [r.lesion_in_lung_pct for r in mine if r.label == "normal"]
        outside = [r.lesion_outside_pct for r in mine if r.lesion_outside_pct is not None]
        if not abnormal or not normal:
            out.append(f"- **{model}**: not enough classes among the volumes to judge.")
            continue
        separated = min(abnormal) > max(normal)
        quiet = max(normal) < NORMAL_MAX_PERCENT
        if separated and quiet:
            verdict = "holds"
        elif separated:
            verdict = (
                f"holds only in ranking: every COVID-19/CAP scan gets more than every normal scan, but the normal "
                f"scans are not close to none (at least one at or above {NORMAL_MAX_PERCENT:g} %)"
            )
        elif quiet:
            verdict = (
                "does not hold: the normal scans are quiet, but at least one COVID-19/CAP scan gets no more lesion "
                "than a normal scan"
            )
        else:
            verdict = "does not hold: normal scans get as much or more predicted lesion than COVID-19/CAP scans"
        line = (
            f"- **{model}**: COVID-19/CAP scans {min(abnormal):.2f}–{max(abnormal):.2f} % of the lung, normal scans "
            f"{min(normal):.2f}–{max(normal):.2f} %; the expectation {verdict}."
        )
        if outside:
            line += (
                f" Predicted lesion voxels outside the lung mask: {min(outside):.1f}–{max(outside):.1f} % of all "
                "predicted lesion voxels per scan."
            )
        out.append(line)
    return out


def markdown(lungs: list[LungRow], rows: list[Row], models: list[Checkpoint], args: argparse.Namespace) -> str:
    names = [m.name for m in models]
    model_lines = [
        f"- `{m.name}` ({m.card.architecture}, input {'x'.join(map(str, m.card.input_size))}, "
        f"HU window {m.card.intensity.get('hu_window')}, weights sha256 {m.card.sha256[:12]}…): "
        f"trained on {m.card.training.get('data', 'unknown data')}"
        for m in models
    ]
    return "\n".join(
        [
            "# Bundled segmentation models on 6 real CT volumes: a sanity check",
            "",
            "**A sanity check on 6 volumes, not an accuracy measure: no reference lesion masks exist for these scans "
            "and none are used.** The question is only whether the models, trained on 50 MedSeg slices, behave "
            "plausibly on whole HU volumes from another source: COVID-19 and common-pneumonia scans should show "
            "lesions, normal scans close to none. Nothing was tuned for this check (models, thresholds and the lung "
            "mask are used as they are).",
            "",
            "## Method",
            "",
            "- Data: the COVID-CT-MD sample (Afshar et al., Sci Data 2021, doi:10.1038/s41597-021-00900-3), "
            "`covid_ct_md_sample/volumes_256/*.nii.gz`: 6 chest-CT volumes, in-plane 2x2-binned to 256x256, HU; "
            "the class comes from the file name (COVID-19_*, CAP_* = common pneumonia, Normal_*).",
            "- Models: every bundled segmentation model whose card names MedSeg as its training data:",
            *[f"  {line}" for line in model_lines],
            '- Segmentation: `segment_volume(volume, name, device="cpu")`, slice by slice, exactly as '
            "`covidseg segment` runs it (the card's HU window, crop to the body, resize to the input size, argmax). "
            f"{args.threads} CPU thread(s); seconds are the wall time of `segment_volume` on a machine that was "
            "also running other jobs.",
            "- Lung mask: `napari_covidseg.analysis.lungmask.lung_mask`, classical (thresholds, connected "
            "components, a 4 mm closing and hole filling per slice; right lung = image left). It includes "
            "vessels and enclosed consolidation, but dense lesions lying against the chest wall over a long stretch "
            "(peripheral consolidation, effusion) can fall outside it, so part of the 'outside lung' share can be "
            "real lesion missed by the mask rather than a false positive of the model.",
            "- Lesion % of lung = predicted lesion voxels (all lesion classes) inside the lung mask / lung-mask "
            "voxels. Lesion outside lung % = predicted lesion voxels outside the lung mask / all predicted lesion "
            "voxels (false positives in the chest wall, mediastinum or abdomen show up here; – = no lesion "
            "predicted). Volumes in ml from voxel counts and the voxel size.",
            "",
            "Command:",
            "",
            "```",
            ".venv/bin/python scripts/real_volume_check.py",
            "```",
            "",
            "## Lung mask",
            "",
            lung_table(lungs),
            "",
            "## Lesions per model and volume",
            "",
            results_table(rows),
            "",
            "## Reading",
            "",
            f"Criterion, fixed before looking: the expectation holds for a model when every COVID-19/CAP scan has a "
            f"larger lesion fraction of the lung than every normal scan and every normal scan stays below "
            f"{NORMAL_MAX_PERCENT:g} % of the lung.",
            "",
            *reading(rows, names),
            "",
            "Two scans per class are far too few to say anything about sensitivity or specificity; a model can pass "
            "this check and still draw lesion outlines that a radiologist would not accept. Treat the numbers as "
            "a smoke test of the whole pipeline on real HU data (intensity window, body crop, slice-wise inference, "
            "lung mask), nothing more.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA, help="folder with the *.nii.gz volumes")
    ap.add_argument("--out", type=Path, default=OUT, help="markdown report to write")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-write", action="store_true", help="print the tables, do not write the report")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    paths = sorted(args.data.glob("*.nii.gz"))
    if not paths:
        print(f"no volumes in {args.data}", file=sys.stderr)
        return 1
    models = medseg_models()
    if not models:
        print("no bundled segmentation model trained on MedSeg (see src/napari_covidseg/weights/*.json)")
        return 1
    print("models:", ", ".join(m.name for m in models))
    lungs: list[LungRow] = []
    rows: list[Row] = []
    for path in paths:
        volume = load_ct(path)
        label = scan_class(path)
        if volume.intensity != "HU":
            print(f"{path.name}: not a HU volume, skipped", file=sys.stderr)
            continue
        start = time.perf_counter()
        mask = lung_mask(volume)
        seconds = time.perf_counter() - start
        voxel_ml = volume.voxel_volume_ml
        lung_row = LungRow(
            path.name,
            label,
            float((mask == RIGHT_LUNG).sum()) * voxel_ml,
            float((mask == LEFT_LUNG).sum()) * voxel_ml,
            seconds,
        )
        lungs.append(lung_row)
        print(f"{path.name}: lungs {lung_row.total_ml:.0f} ml ({seconds:.1f} s)", flush=True)
        for ckpt in models:
            seg = segment_volume(volume, ckpt, device=args.device)
            row = measure(ckpt.name, path, label, mask, seg, voxel_ml)
            rows.append(row)
            print(
                f"  {ckpt.name}: lesion {row.lesion_in_lung_pct:.2f} % of lung, "
                f"outside lung {_pct(row.lesion_outside_pct)} %, {row.seconds:.1f} s",
                flush=True,
            )
    rows.sort(key=lambda r: ([m.name for m in models].index(r.model), r.file))
    text = markdown(lungs, rows, models, args)
    print()
    print(lung_table(lungs))
    print()
    print(results_table(rows))
    print()
    print("\n".join(reading(rows, [m.name for m in models])))
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
