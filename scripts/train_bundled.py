"""Train the bundled `unet` and `resattunet` weights on all 50 MedSeg training slices; write their model cards.

The protocol is the cross-validation protocol of scripts/cross_validate.py (same networks, widths, input size,
augmentation, crops, learning rate), with more steps because all 50 slices are used. Each card carries the
cross-validation scores of its architecture from docs/cv/ (the only estimate of accuracy on unseen slices).

    .venv/bin/python scripts/train_bundled.py                 # train both, write src/napari_covidseg/weights/
    .venv/bin/python scripts/train_bundled.py --cards-only    # refresh the cards' CV metrics; weights untouched

"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from napari_covidseg.constants import MEDSEG_HU_WINDOW
from napari_covidseg.models.card import ModelCard
from napari_covidseg.models.checkpoint import BUNDLED_DIR, read_checkpoint, save_checkpoint
from napari_covidseg.training.datasets import load_medseg
from napari_covidseg.training.run import TrainSettings, new_card, train_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "medseg_covid_semiseg_infnet"
MODELS = {"unet": ("unet", {"base_width": 16}), "resattunet": ("resattunet", {"base_width": 16})}
SCORES = ("ground-glass opacity", "consolidation", "infection")
MODE = "mean over images"
NOTES = (
    "Trained on the 50 labelled MedSeg COVID-19 CT slices of Inf-Net's training split (MedSeg / Italian Society of "
    "Medical and Interventional Radiology). Predicts background, ground-glass opacity and consolidation only: the "
    "training data has no pleural-effusion labels, so this model never predicts pleural effusion. Accuracy on unseen "
    "slices is estimated by 5-fold cross-validation (metrics): modest, trained on CPU only; 50 slices from at most "
    "about 40 patients is little data. "
    "Research use only, not for diagnosis."
)
INTENSITY_NOTE = (
    "The MedSeg slices are 8-bit windowed CT. The HU window reproducing them was found by matching histogram "
    "landmarks (aerated lung, soft tissue) against HU volumes: docs/INTENSITY.md, scripts/find_intensity_mapping.py."
)


def cv_metrics(arch: str, cv_dir: Path) -> dict:
    reports = [json.loads(p.read_text()) for p in sorted(cv_dir.glob(f"{arch}_fold*.json"))]
    if not reports:
        return {}
    values = {}
    for k in SCORES:
        per = [r["dice"][k][MODE] for r in reports if r["dice"].get(k, {}).get(MODE) is not None]
        if per:
            values[f"dice {k}"] = {
                "mean": round(statistics.mean(per), 4),
                "sd": round(statistics.stdev(per), 4) if len(per) > 1 else 0.0,
                "per_fold": [round(v, 4) for v in per],
            }
    long_runs = [json.loads(p.read_text()) for p in sorted((cv_dir.parent / "cv_3000").glob(f"{arch}_fold*.json"))]
    shipped = {}
    if long_runs:
        shipped = {
            "protocol": f"the shipped budget ({long_runs[0]['settings']['steps']} steps) trained on 4 folds and scored "
            "on the held-out fold, for the folds CPU time allowed (docs/RESULTS.md)",
            "folds": [r["fold"] for r in long_runs],
            "values": {
                f"dice {k}": [round(r["dice"][k][MODE], 4) for r in long_runs if r["dice"].get(k, {}).get(MODE)]
                for k in SCORES
            },
        }
    return {
        "shipped_budget_held_out": shipped,
        "protocol": f"{len(reports)}-fold cross-validation on the 50 MedSeg training slices (contiguous slice-number "
        "folds, docs/cv/folds.json), same architecture and protocol with the CV budget "
        f"({reports[0]['settings']['steps']} steps); each held-out slice scored on its own at its file's "
        "resolution, Dice mean over images, then mean and sd over folds. See docs/RESULTS.md.",
        "values": values,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=BUNDLED_DIR)
    ap.add_argument("--cv", type=Path, default=ROOT / "docs" / "cv")
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cards-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.models:
        arch, config = MODELS[name]
        if args.cards_only:
            ckpt = read_checkpoint(args.out / f"{name}.json", bundled=True)
            card: ModelCard = ckpt.card
            card.metrics = cv_metrics(arch, args.cv)
            card.intensity.update(hu_window=list(MEDSEG_HU_WINDOW), note=INTENSITY_NOTE)  # input to HU scans only
            card.notes = NOTES
            (args.out / f"{name}.json").write_text(card.to_json(), encoding="utf-8")
            print(f"{name}: card metrics, intensity and notes refreshed")
            continue
        card = new_card(
            name, arch, config, size=args.size, hu_window=MEDSEG_HU_WINDOW, intensity_note=INTENSITY_NOTE, notes=NOTES
        )
        card.version = "1.0.0"
        data = load_medseg(args.data, card)
        settings = TrainSettings(steps=args.steps, crop=args.crop)

        def progress(step: int, steps: int, loss: float, name: str = name) -> None:
            if step % 50 == 0 or step == steps:
                print(f"{name}: step {step}/{steps} loss {loss:.3f}", flush=True)

        loaded, result = train_model(data, card, settings, device=args.device, progress=progress)
        card.training["command"] = (
            f"scripts/train_bundled.py --steps {args.steps} --crop {args.crop} --size {args.size}"
        )
        card.metrics = cv_metrics(arch, args.cv)
        save_checkpoint(loaded.module, card, args.out, overwrite=True)
        print(f"{name}: {result.seconds:.0f} s, last-50 mean loss {card.training['final_loss_mean_last_50']:.3f}")


if __name__ == "__main__":
    main()
