"""Quantify the 6 real COVID-CT-MD volumes with a bundled segmentation model: the table in docs/QUANTIFY.md.

For each HU volume in ``../shared/data/covid_ct_md_sample/volumes_256`` (class from the file-name prefix: COVID-19_*,
CAP_* = common pneumonia, Normal_*): segment it on the CPU with the bundled model (``segment_volume(volume, model,
device="cpu")``), then ``quantify`` it against the classical lung mask. Prints a markdown table (paste it into
docs/QUANTIFY.md); ``--json`` also writes every ``Quantification.to_dict()``.

No reference masks exist for these volumes and the bundled models are demo quality: the numbers show what the
pipeline does on real scans, they are not validated measurements.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/quantify_real_volumes.py                 # unet, 1 thread
    OMP_NUM_THREADS=1 .venv/bin/python scripts/quantify_real_volumes.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from napari_covidseg.analysis.quantify import quantify
from napari_covidseg.inference.segment import segment_volume
from napari_covidseg.io import load_ct

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "covid_ct_md_sample" / "volumes_256"
CLASS_PREFIXES = (("COVID-19_", "COVID-19"), ("CAP_", "common pneumonia"), ("Normal_", "normal"))
ADULT_LUNG_ML = (3000.0, 7000.0)  # rough range of total lung volume of an adult at inspiration


def scan_class(path: Path) -> str:
    """Diagnosis class from the file-name prefix."""
    for prefix, label in CLASS_PREFIXES:
        if path.name.startswith(prefix):
            return label
    return "unknown"


def table(results: list[tuple[Path, object, float, float]]) -> str:
    """Markdown table, one row per volume."""
    lines = [
        "| file | class | right lung ml | left lung ml | total lung ml | adult range? | involvement % right | "
        "involvement % left | involvement % total | severity 0-25 | folded ml | excluded ml | "
        "HU ground-glass-like % | seg. s | quant. s |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lo, hi = ADULT_LUNG_ML
    for path, q, seg_s, q_s in results:
        total = q.lung_ml["total"]
        inside = "yes" if lo <= total <= hi else "no"
        lines.append(
            f"| {path.name} | {scan_class(path)} | {q.lung_ml['right']:.0f} | {q.lung_ml['left']:.0f} | {total:.0f} | "
            f"{inside} | {q.involvement_pct['right']:.2f} | {q.involvement_pct['left']:.2f} | "
            f"{q.involvement_pct['total']:.2f} | {q.severity} | {q.folded_ml:.1f} | {q.excluded_ml:.1f} | "
            f"{q.hu_bands['ground-glass-like']['total']:.2f} | {seg_s:.1f} | {q_s:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA, help="folder with the *.nii.gz volumes")
    ap.add_argument("--model", default="unet", help="bundled model name (default unet)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--json", type=Path, default=None, help="also write every Quantification.to_dict() here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    paths = sorted(args.data.glob("*.nii.gz"))
    if not paths:
        print(f"no *.nii.gz in {args.data}", file=sys.stderr)
        return 1
    results = []
    for path in paths:
        volume = load_ct(path)
        seg = segment_volume(volume, args.model, device="cpu")
        start = time.perf_counter()
        q, _ = quantify(volume, seg.labels, model=seg.card.name)
        q_s = time.perf_counter() - start
        results.append((path, q, seg.seconds, q_s))
        print(
            f"{path.name}: shape {volume.shape}, spacing {tuple(round(s, 3) for s in volume.spacing)}, "
            f"segmentation {seg.seconds:.1f} s, quantification {q_s:.1f} s; notes: {'; '.join(q.notes)}",
            file=sys.stderr,
            flush=True,
        )
    print(table(results))
    if args.json:
        payload = [{"file": p.name, "class": scan_class(p), **q.to_dict()} for p, q, _, _ in results]
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
