"""How long fine-tuning the bundled `unet` on a radiologist's corrections takes on CPU.

Writes 10 corrected 256x256 slices (phantom slices with their phantom lesion masks, as a corrections folder) to a
temporary folder, fine-tunes the bundled ``unet`` on them with the default fine-tune settings (100 steps, batch 8,
the card's input size, 96-px crops) on CPU, and reports wall time, seconds per step, torch threads, and the Dice before
and after on the slices held back from training. The phantom is synthetic: the Dice numbers show the pipeline works
end to end, they say nothing about accuracy on real scans. Nothing is written to the user models folder.

    python benchmarks/finetune_cpu.py [--steps 100] [--threads N] [--effusion]

Results: printed, and written to benchmarks/results/finetune_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "finetune_cpu.json"


def write_corrections(folder: Path, effusion: bool) -> list[str]:
    """10 slices: z = 1..5 of two 256x256 phantoms (the slices with lesions), one file per slice."""
    from napari_covidseg.io import save_array, save_labels
    from napari_covidseg.io.volume import display_volume
    from napari_covidseg.sample import make_phantom

    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    keys = []
    for seed in (0, 1):
        ph = make_phantom(seed=seed, shape=(8, 256, 256))
        for z in range(1, 6):
            key = f"phantom-s{seed}_z{z:04d}"
            labels = ph.lesions[z : z + 1]
            if not effusion:  # the bundled unet has no effusion class; without this the head would be expanded
                labels = np.where(labels == 3, 0, labels).astype(np.uint8)
            vol = display_volume(ph.ct[z : z + 1], ph.spacing, key, "HU")
            save_array(ph.ct[z : z + 1].astype(np.int16), vol, folder / "images" / f"{key}.nii.gz")
            save_labels(labels, vol, folder / "masks" / f"{key}.nii.gz")
            keys.append(key)
    return keys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--effusion", action="store_true", help="keep label 3: the 3-class unet is expanded to 4")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from napari_covidseg.training.finetune import FinetuneSettings, iter_finetune

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["COVIDSEG_HOME"] = str(tmp / "home")  # never touch the real user models folder
        keys = write_corrections(tmp / "corrections", args.effusion)
        settings = FinetuneSettings(steps=args.steps, batch_size=args.batch_size)
        stamps: dict[str, float] = {}
        start = time.perf_counter()
        gen = iter_finetune("unet", tmp / "corrections", "unet-bench", settings, device="cpu", out_dir=tmp / "out")
        try:
            while True:
                p = next(gen)
                stamps.setdefault(p.stage, time.perf_counter() - start)  # first report of each stage
                if p.stage == "training" and (p.done % 10 == 0 or p.done == p.total):
                    elapsed = time.perf_counter() - start
                    print(f"step {p.done}/{p.total} loss {p.loss:.4f} ({elapsed:.0f} s)", flush=True)
        except StopIteration as done:
            result = done.value
        wall = time.perf_counter() - start
        card = result.checkpoint.card

    train_seconds = float(card.training["seconds"])
    report = {
        "benchmark": "fine-tune the bundled unet on 10 corrected 256x256 phantom slices, CPU",
        "base": "unet",
        "input_size": card.input_size,
        "corrected_slices": len(keys),
        "trained_on": len(result.train_keys),
        "held_back": result.test_keys,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "crop": settings.crop,
        "lr": settings.lr,
        "wall_seconds": round(wall, 1),
        "train_seconds": round(train_seconds, 1),
        "seconds_per_step": round(train_seconds / args.steps, 3),
        "stage_first_reported_seconds": {k: round(v, 1) for k, v in stamps.items()},
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "head_expanded": "head_expanded" in card.training,
        "loss_first_10": round(sum(result.losses[:10]) / len(result.losses[:10]), 4),
        "loss_last_10": round(sum(result.losses[-10:]) / len(result.losses[-10:]), 4),
        "dice": {
            "what": f"Dice (mean over slices) of the base unet (before) and the fine-tuned model (after) on "
            f"{result.evaluated_on}; synthetic phantom slices: a pipeline check, not an accuracy estimate",
            "before": result.before,
            "after": result.after,
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
