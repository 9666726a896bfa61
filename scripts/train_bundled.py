"""Train the bundled `unet` and `resattunet` weights on all 50 MedSeg training slices; write their model cards.

The protocol is the cross-validation protocol of scripts/cross_validate.py (same networks, widths, input size,
augmentation, crops, learning rate), with more steps because all 50 slices are used. Each card carries the
cross-validation scores of its architecture from docs/cv/ (the only estimate of accuracy on unseen slices) and, for
the self-teacher recipe, those of docs/cv_semi/ (scripts/semi_supervised_cv.py).

Two recipes, run in this order (the second needs the first's models as teachers):

1. ``--recipe labelled``: the 50 labelled slices only (bundled weights 1.0.0 were made so, 3000 steps).
2. ``--recipe self-teacher --teacher-dir DIR``: the 50 labelled slices plus the 1600 slices of
   ../shared/data/infnet_pseudo1600 relabelled by the labelled model of the same architecture in DIR
   (training.datasets.relabel_with_teacher: its lesion probability as the soft lesion-only target; Inf-Net's own
   pseudo-labels are not used). The recipe that won the fold-clean comparison of docs/SEMI_SUPERVISED.md.

Runs are resumable (--runs, outside the repository): a stopped command, run again, continues.

    .venv/bin/python scripts/train_bundled.py --recipe labelled --steps 3000 --out /tmp/covidseg-runs/teachers
    .venv/bin/python scripts/train_bundled.py --recipe self-teacher --teacher-dir /tmp/covidseg-runs/teachers
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
from napari_covidseg.models.checkpoint import BUNDLED_DIR, read_checkpoint, resolve_model, save_checkpoint, sha256_of
from napari_covidseg.training.datasets import load_medseg, load_soft_lesions, relabel_with_teacher
from napari_covidseg.training.run import TrainSettings, new_card, train_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "medseg_covid_semiseg_infnet"
PSEUDO = ROOT.parent / "shared" / "data" / "infnet_pseudo1600"
MODELS = {"unet": ("unet", {"base_width": 16}), "resattunet": ("resattunet", {"base_width": 16})}
SCORES = ("ground-glass opacity", "consolidation", "infection")
MODE = "mean over images"
NOTES = (
    "Trained on the 50 labelled MedSeg COVID-19 CT slices of Inf-Net's training split (MedSeg / Italian Society of "
    "Medical and Interventional Radiology){semi}. Predicts background, ground-glass opacity and consolidation "
    "only: the training data has no pleural-effusion labels, so this model never predicts pleural effusion. "
    "Accuracy on unseen slices is estimated by 5-fold cross-validation (metrics): modest, trained on CPU only; "
    "50 slices from at most about 40 patients is little data. "
    "Research use only, not for diagnosis."
)
SEMI_NOTE = (
    ", plus 1600 lung-cropped slices of 20 other COVID-19 patients (infnet_pseudo1600) whose lesion-only targets "
    "came from our own labelled-only model of the same architecture (self-training; Inf-Net's pseudo-labels unused)"
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


def semi_metrics(arch: str, semi_dir: Path) -> dict:
    """Held-out Dice of the fold-clean semi-supervised comparison (docs/cv_semi/), per variant, mean over folds."""
    reports = [json.loads(p.read_text()) for p in sorted(semi_dir.glob(f"{arch}_*_fold*.json"))]
    if not reports:
        return {}
    out = {}
    for variant in sorted({r["variant"] for r in reports}):
        mine = [r for r in reports if r["variant"] == variant]
        out[variant] = {
            "folds": [r["fold"] for r in mine],
            "steps": mine[0]["steps"],
            **{
                f"dice {k}": round(statistics.mean(r["dice"][k][MODE] for r in mine), 4)
                for k in SCORES
                if all(r["dice"].get(k, {}).get(MODE) is not None for r in mine)
            },
        }
    return {
        "protocol": "5-fold cross-validation (docs/cv/folds.json), every variant at the same steps, batch, crop, "
        "learning rate and seed; the held-out fold labelled-only; self-teacher relabels the 1600 slices with a "
        "teacher trained on that fold's training slices only (docs/SEMI_SUPERVISED.md)",
        "variants": out,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--pseudo", type=Path, default=PSEUDO)
    ap.add_argument("--out", type=Path, default=BUNDLED_DIR)
    ap.add_argument("--cv", type=Path, default=ROOT / "docs" / "cv")
    ap.add_argument("--cv-semi", type=Path, default=ROOT / "docs" / "cv_semi")
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--recipe", choices=("labelled", "self-teacher"), default="self-teacher")
    ap.add_argument("--teacher-dir", type=Path, help="the labelled-recipe models (NAME.json) used as teachers")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="auto")
    ap.add_argument("--runs", type=Path, default=Path("/tmp/covidseg-runs/bundled"), help="resumable run state")
    ap.add_argument("--version", default="2.0.0")
    ap.add_argument("--cards-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.models:
        arch, config = MODELS[name]
        if args.cards_only:
            ckpt = read_checkpoint(args.out / f"{name}.json", bundled=True)
            card: ModelCard = ckpt.card
            card.metrics = {**cv_metrics(arch, args.cv), "semi_supervised_cv": semi_metrics(arch, args.cv_semi)}
            card.intensity.update(hu_window=list(MEDSEG_HU_WINDOW), note=INTENSITY_NOTE)  # input to HU scans only
            semi = card.training.get("protocol", {}).get("extra_data")
            card.notes = NOTES.format(semi=SEMI_NOTE if semi else "")
            (args.out / f"{name}.json").write_text(card.to_json(), encoding="utf-8")
            print(f"{name}: card metrics, intensity and notes refreshed")
            continue
        semi = args.recipe == "self-teacher"
        card = new_card(
            name,
            arch,
            config,
            size=args.size,
            hu_window=MEDSEG_HU_WINDOW,
            intensity_note=INTENSITY_NOTE,
            notes=NOTES.format(semi=SEMI_NOTE if semi else ""),
        )
        card.version = args.version
        data = load_medseg(args.data, card)
        extra, teacher_info = None, {}
        command = (
            f"scripts/train_bundled.py --recipe {args.recipe} --steps {args.steps} --crop {args.crop} "
            f"--size {args.size}"
        )
        if semi:
            if args.teacher_dir is None:
                ap.error("--recipe self-teacher needs --teacher-dir (models of --recipe labelled)")
            teacher_path = args.teacher_dir / f"{name}.json"
            teacher = resolve_model(teacher_path, task="segmentation")
            extra = relabel_with_teacher(
                load_soft_lesions(args.pseudo, card), teacher, device=args.device, name=f"{name} {teacher.card.version}"
            )
            teacher_info = {
                "teacher": {
                    "model": teacher.card.name,
                    "version": teacher.card.version,
                    "sha256": sha256_of(Path(teacher.source)),
                    "made_by": teacher.card.training.get("command", ""),
                    "trained_on": teacher.card.training.get("data", ""),
                }
            }
            command += " --teacher-dir DIR"
        settings = TrainSettings(steps=args.steps, crop=args.crop)

        def progress(step: int, steps: int, loss: float, name: str = name) -> None:
            if step % 50 == 0 or step == steps:
                print(f"{name}: step {step}/{steps} loss {loss:.3f}", flush=True)

        run = args.runs / f"{name}_{args.recipe}_steps{args.steps}"
        loaded, result = train_model(
            data, card, settings, device=args.device, progress=progress, extra=extra, run_dir=run
        )
        card.training.update(
            command=command,
            threads=args.threads,
            cpu_hours=round(result.seconds * args.threads / 3600, 2),
            **teacher_info,
        )
        card.metrics = {**cv_metrics(arch, args.cv), "semi_supervised_cv": semi_metrics(arch, args.cv_semi)}
        save_checkpoint(loaded.module, card, args.out, overwrite=True)
        print(f"{name}: {result.seconds:.0f} s, last-50 mean loss {card.training['final_loss_mean_last_50']:.3f}")


if __name__ == "__main__":
    main()
