"""Train the bundled *demonstration* `unet` weights on synthetic phantoms (NOT a COVID model).

Until the MedSeg-trained weights land, `covidseg segment` needs some trained weights to run with no flags. These are
trained only on `napari_covidseg.sample.make_phantom` volumes and scored on phantoms of other seeds; on real CT
their output means nothing, and their model card says so.

    .venv/bin/python scripts/train_phantom_demo.py            # writes src/napari_covidseg/weights/unet.*
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import numpy as np
import torch

from napari_covidseg.analysis.metrics import INFECTION, aggregate, count_image, json_safe
from napari_covidseg.constants import LESION_CLASSES, LESION_COLOURS, LUNG_WINDOW
from napari_covidseg.inference import segment_volume
from napari_covidseg.inference.preprocess import prepare_slices
from napari_covidseg.models import build_model
from napari_covidseg.models.card import ModelCard
from napari_covidseg.models.checkpoint import BUNDLED_DIR, LoadedModel, save_checkpoint
from napari_covidseg.sample import make_phantom
from napari_covidseg.training import train_segmentation

TRAIN_SEEDS = tuple(range(10, 18))
TEST_SEEDS = (100, 101)
SHAPE = (24, 256, 256)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--out", type=Path, default=BUNDLED_DIR)
    args = ap.parse_args()
    torch.manual_seed(0)
    card = ModelCard(
        name="unet",
        architecture="unet",
        config={"base_width": args.width, "num_classes": len(LESION_CLASSES)},
        task="segmentation",
        classes=[{"id": i, "name": n, "colour": list(LESION_COLOURS[i])} for i, n in LESION_CLASSES.items()],
        input_size=[args.size, args.size],
        intensity={
            "hu_window": list(LUNG_WINDOW),
            "display_window": [0, 255],
            "note": "lung window -1350..150 HU scaled to 0..1; display images 0..255 scaled to 0..1",
        },
        training={
            "data": "synthetic phantoms only (napari_covidseg.sample, seeds "
            f"{TRAIN_SEEDS[0]}-{TRAIN_SEEDS[-1]}, shape {SHAPE})",
            "protocol": f"{args.steps} steps, batch 8, Adam lr 3e-3 cosine, Dice+CE, "
            "class-balanced slice sampling, rot90/flip/jitter",
            "script": "scripts/train_phantom_demo.py",
            "date": dt.date.today().isoformat(),
            "seed": 0,
        },
        version="0.1.0-phantom-demo",
        notes="DEMONSTRATION WEIGHTS trained on synthetic phantoms only. Not a COVID-19 model: output on real "
        "CT is meaningless. Replaced by MedSeg-trained weights in a later release.",
    )
    model = build_model("unet", num_classes=card.num_classes, base_width=args.width)
    xs, ys = [], []
    for seed in TRAIN_SEEDS:
        ph = make_phantom(seed, SHAPE)
        x, y = prepare_slices(ph.volume(f"phantom{seed}"), card, ph.lesions)
        xs.append(x)
        ys.append(y)
    history = train_segmentation(
        model,
        torch.cat(xs),
        torch.cat(ys),
        steps=args.steps,
        batch_size=8,
        lr=3e-3,
        device="auto",
        progress=lambda s, n, loss: print(f"step {s}/{n} loss {loss:.4f}", flush=True) if s % 25 == 0 else None,
    )
    per_image = []
    for seed in TEST_SEEDS:
        ph = make_phantom(seed, SHAPE)
        vol = ph.volume(f"phantom{seed}")
        pred = segment_volume(vol, LoadedModel(model, card)).labels
        per_image.append(count_image(pred, ph.lesions, groups=INFECTION))
    for mode in ("mean over images", "pooled"):
        card.metrics.setdefault("values", {})[mode] = json_safe(aggregate(per_image, mode=mode))
    card.metrics["protocol"] = (
        f"Dice etc. on held-out synthetic phantoms (seeds {TEST_SEEDS}), each volume one image; NOT real CT"
    )
    card.training["final_loss"] = float(np.mean(history.losses[-20:]))
    card.training["seconds"] = round(history.seconds, 1)
    ckpt = save_checkpoint(model, card, args.out, overwrite=True)
    print(json.dumps(card.metrics, indent=2, default=float))
    print(f"wrote {ckpt.weights} ({ckpt.weights.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
