"""Does the extra data help? Cross-validation folds trained with and without the 1600 pseudo-labelled slices.

For each network and fold: the same labelled training folds, the same steps, batch, crop, learning rate and seed;
variant ``labelled`` trains on the MedSeg training folds only, variant ``infnet-pseudo`` adds Inf-Net's 1600
pseudo-labelled slices (../shared/data/infnet_pseudo1600) as lesion-only targets (training.datasets.
load_soft_lesions, loop.soft_lesion_loss; share and weight from TrainSettings). The held-out fold is labelled-only
and scored through the `covidseg evaluate` code path, as in scripts/cross_validate.py (same folds).

Leak, stated in every result: Inf-Net's pseudo-labels were made by a model trained on all 50 labelled MedSeg
slices, including each held-out fold, so the ``infnet-pseudo`` score is optimistic. Variant ``self-teacher`` is
the honest one: the 1600 slices relabelled by our own teacher of that fold (the ``labelled`` run of the same fold
and steps). Training curves: the held-out Dice every ``--eval-every`` steps of the one run (one JSON per
variant/network/fold in docs/cv_semi/, with the curve). Runs are resumable: each keeps its state in --runs
(outside the repository) and a stopped script continues there.

    .venv/bin/python scripts/semi_supervised_cv.py --only unet --fold 0 --steps 1500 --eval-every 250
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from napari_covidseg.analysis.evaluate import score_pairs
from napari_covidseg.analysis.metrics import json_safe
from napari_covidseg.models import build_model
from napari_covidseg.models.checkpoint import LoadedModel
from napari_covidseg.training.datasets import (
    SliceDataset,
    contiguous_folds,
    load_medseg,
    load_soft_lesions,
    medseg_pairs,
    relabel_with_teacher,
)
from napari_covidseg.training.loop import STATE_NAME
from napari_covidseg.training.run import TrainSettings, new_card, train_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DATA = SHARED / "medseg_covid_semiseg_infnet"
PSEUDO = SHARED / "infnet_pseudo1600"
NETWORKS = {"unet": {"base_width": 16}, "resattunet": {"base_width": 16}}
SCORES = ("ground-glass opacity", "consolidation", "infection")
MODE = "mean over images"
SELF = (
    "our own teacher, trained on this fold's labelled training slices only (fold-clean): the labelled run of the "
    "same fold and steps"
)
LEAK = (
    "Inf-Net's pseudo-labels come from a model trained on all 50 labelled slices, including this held-out fold: "
    "optimistic"
)


def relabel(extra: SliceDataset, arch: str, state_path: Path, device: str) -> SliceDataset:
    """The extra slices with new soft targets from our own fold teacher (a network trained on the labelled
    training folds only, read from its finished run state): training.datasets.relabel_with_teacher."""
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    card = new_card(f"teacher-{arch}", arch, NETWORKS[arch])
    teacher = build_model(arch, num_classes=card.num_classes, **card.config)
    teacher.load_state_dict(state["model"])
    return relabel_with_teacher(extra, LoadedModel(teacher, card), device=device, name=state_path.parent.name)


def train_and_score(data, folds, fold, arch, variant, settings, extra, run: Path, args):
    """One training run on the folds but ``fold``; the held-out Dice every ``args.eval_every`` steps (the curve,
    kept in ``run/curve.json`` so that a resumed run keeps its earlier points). Evaluation uses no random numbers
    and restores training mode, so the final weights are those of a run without evaluations."""
    held = {data.files[i][0].name for i, f in enumerate(folds) if f == fold}
    stems = {n.rsplit(".", 1)[0] for n in held}
    train_idx = [i for i, g in enumerate(data.groups) if g not in held and g not in stems]
    pairs = [p for i, p in enumerate(data.files) if folds[i] == fold]
    card = new_card(f"semi-{arch}-{variant}-f{fold}", arch, NETWORKS[arch])
    torch.manual_seed(settings.seed)
    model = build_model(arch, num_classes=card.num_classes, **card.config)
    run.mkdir(parents=True, exist_ok=True)
    curve_path = run / "curve.json"
    curve = json.loads(curve_path.read_text()) if curve_path.exists() else []

    def progress(step: int, steps: int, loss: float) -> None:
        if step % args.eval_every and step != steps:
            return
        if any(point["steps"] == step for point in curve):
            return
        report = score_pairs(pairs, LoadedModel(model, card), device=args.device)
        model.train()
        dice = {k: report["dice"][k][MODE] for k in SCORES if k in report["dice"]}
        curve.append({"steps": step, "loss": loss, **dice})
        curve_path.write_text(json.dumps(curve, indent=1) + "\n")
        print(
            f"{arch} {variant} fold {fold} @ {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()), flush=True
        )

    loaded, result = train_model(
        data.subset(train_idx),
        card,
        settings,
        device=args.device,
        model=model,
        progress=progress,
        extra=extra,
        run_dir=run,
        checkpoint_seconds=300.0,
    )
    report = score_pairs(pairs, loaded, device=args.device)
    report["held_out"] = [p[0].name for p in pairs]
    return report, sorted(curve, key=lambda p: p["steps"]), round(result.seconds, 1)


def write_report(out_dir: Path, report: Path) -> None:
    """docs/SEMI_SUPERVISED.md from the JSON results: per network, fold and variant the held-out Dice at the end
    and along the run, with the gain of the extra data at equal steps."""
    results = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json"))]
    lines = [
        "# Semi-supervised training: does the extra data help?",
        "",
        "Generated by `.venv/bin/python scripts/semi_supervised_cv.py` (see its docstring) from docs/cv_semi/*.json. "
        "Held-out MedSeg folds of scripts/cross_validate.py, labelled-only; the same steps, batch, crop, learning "
        "rate and seed for every variant; Dice as mean over held-out images. Variants: `labelled` (MedSeg training "
        "folds only); `infnet-pseudo` (plus Inf-Net's 1600 pseudo-labels; **leak:** " + LEAK + "); "
        "`self-teacher` (plus the same 1600 slices relabelled by " + SELF + ").",
        "",
        "| network | fold | steps | variant | GGO | consolidation | infection | train seconds |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in sorted(results, key=lambda r: (r["architecture"], r["fold"], r["steps"], r["variant"])):
        d = {k: r["dice"][k][MODE] for k in SCORES if k in r["dice"]}
        lines.append(
            f"| {r['architecture']} | {r['fold']} | {r['steps']} | {r['variant']} | "
            + " | ".join(f"{d.get(k, float('nan')):.3f}" for k in SCORES)
            + f" | {r.get('train_seconds', '')} |"
        )
    lines += ["", *fold_means(results), ""]
    plot = report.with_name("semi_supervised_curves.png")
    draw_curves(results, plot)
    lines += [
        "",
        "Held-out Dice along each run (the training curve; every point is the same run, evaluated):",
        "",
        f"![held-out infection Dice against steps, per variant and fold]({plot.name})",
        "",
    ]
    for r in sorted(results, key=lambda r: (r["architecture"], r["fold"], r["variant"])):
        points = ", ".join(f"{p['steps']}: {p.get('infection', float('nan')):.3f}" for p in r["curve"])
        lines.append(f"- {r['architecture']} fold {r['fold']} {r['variant']}, infection Dice by step: {points}")
    lines += [
        "",
        "One fold of 10 held-out slices is a noisy estimate: differences of a few hundredths are within fold-to-fold "
        "spread (docs/RESULTS.md); all five folds are needed before a claim.",
        "",
    ]
    report.write_text("\n".join(lines), encoding="utf-8")
    update_results(out_dir, report.with_name("RESULTS.md"))


def fold_means(results: list[dict]) -> list[str]:
    """Mean (and range) over the folds every variant has finished, and each variant's change against
    ``labelled`` fold by fold: the comparison at equal steps on the same folds."""
    out = []
    for arch in sorted({r["architecture"] for r in results}):
        mine = [r for r in results if r["architecture"] == arch]
        variants = sorted({r["variant"] for r in mine}, key=lambda v: list(COLOURS).index(v) if v in COLOURS else 9)
        by = {(r["variant"], r["fold"]): r for r in mine}
        folds = sorted(f for f in {r["fold"] for r in mine} if all((v, f) in by for v in variants))
        if not folds:
            continue
        out += [
            f"**{arch}, folds {', '.join(map(str, folds))} ({len(folds)} of 5), {mine[0]['steps']} steps:** mean "
            "(min-max) held-out Dice, and the change against `labelled` on the same fold",
            "",
            "| variant | GGO | consolidation | infection | infection change vs labelled, per fold |",
            "|---|---:|---:|---:|---|",
        ]
        for v in variants:
            cells = []
            for k in SCORES:
                vals = [by[(v, f)]["dice"][k][MODE] for f in folds]
                cells.append(f"{sum(vals) / len(vals):.3f} ({min(vals):.2f}-{max(vals):.2f})")
            delta = (
                [by[(v, f)]["dice"]["infection"][MODE] - by[("labelled", f)]["dice"]["infection"][MODE] for f in folds]
                if ("labelled", folds[0]) in by
                else []
            )
            change = ", ".join(f"{d:+.3f}" for d in delta) if v != "labelled" else "—"
            out.append(f"| {v} | " + " | ".join(cells) + f" | {change} |")
        out.append("")
    return out


COLOURS = {"labelled": (40, 40, 40), "infnet-pseudo": (200, 110, 0), "self-teacher": (20, 90, 200)}


def draw_curves(results: list[dict], path: Path) -> None:
    """Held-out infection Dice against training steps: one panel per network, one line per run, coloured by
    variant (PIL, no matplotlib)."""
    from PIL import Image, ImageDraw

    archs = sorted({r["architecture"] for r in results}, key=lambda a: list(NETWORKS).index(a) if a in NETWORKS else 9)
    pw, h, left, right, top, bottom = 520, 520, 60, 70, 50, 60
    w = pw * max(len(archs), 1) + 150
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    d.text((10, 10), "held-out infection Dice (MedSeg CV folds; mean over images) against training steps", fill="black")
    for n, arch in enumerate(archs):
        mine = [r for r in results if r["architecture"] == arch]
        x0 = n * pw
        steps = max((p["steps"] for r in mine for p in r["curve"]), default=1)

        def xy(step: float, dice: float, x0: int = x0, steps: int = steps) -> tuple[float, float]:
            return x0 + left + step / steps * (pw - left - right), h - bottom - dice * (h - top - bottom)

        d.rectangle([x0 + left, top, x0 + pw - right, h - bottom], outline="black")
        d.text((x0 + left + 5, top - 15), arch, fill="black")
        for v in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
            x, y = xy(0, v)
            d.line([x - 5, y, x, y], fill="black")
            d.text((x - 30, y - 6), f"{v:.1f}", fill="black")
        for k in range(0, steps + 1, max(steps // 4, 1)):
            x, y = xy(k, 0)
            d.line([x, y, x, y + 5], fill="black")
            d.text((x - 12, y + 8), str(k), fill="black")
        d.text((x0 + left + 150, h - 25), "training steps", fill="black")
        for r in mine:
            pts = [xy(p["steps"], p.get("infection", 0.0)) for p in sorted(r["curve"], key=lambda p: p["steps"])]
            colour = COLOURS.get(r["variant"], (120, 120, 120))
            if len(pts) > 1:
                d.line(pts, fill=colour, width=2)
            for x, y in pts:
                d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
            if pts:
                d.text((pts[-1][0] + 6, pts[-1][1] - 6), f"f{r['fold']}", fill=colour)
    for i, (name, colour) in enumerate(COLOURS.items()):
        y = top + 20 + 20 * i
        x = w - 145
        d.line([x, y, x + 25, y], fill=colour, width=3)
        d.text((x + 30, y - 6), name, fill=colour)
    im.save(path)


RESULTS_HEADING = "## With the 1600 extra slices (semi-supervised), at equal steps"


def results_section(out_dir: Path) -> list[str]:
    """The section of docs/RESULTS.md on the extra data (written by this script and by scripts/cross_validate.py,
    from the same docs/cv_semi/*.json)."""
    results = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json"))]
    if not results:
        return []
    return [
        RESULTS_HEADING,
        "",
        "Generated by `.venv/bin/python scripts/semi_supervised_cv.py` (details, every fold and the curves: "
        "[SEMI_SUPERVISED.md](SEMI_SUPERVISED.md)). Same folds and scoring as above; within a network every variant "
        "has the same steps, batch, crop, learning rate and seed. `labelled`: the MedSeg training folds only. "
        "`infnet-pseudo`: plus Inf-Net's 1600 pseudo-labelled slices as lesion-only targets (**leaky:** " + LEAK + "). "
        "`self-teacher`: plus the same 1600 slices relabelled by " + SELF + " — fold-clean, and the recipe of the "
        "bundled models.",
        "",
        *fold_means(results),
        "![held-out infection Dice against steps, per network, variant and fold](semi_supervised_curves.png)",
        "",
    ]


def update_results(out_dir: Path, results_md: Path) -> None:
    """Replace (or append) the semi-supervised section at the end of docs/RESULTS.md."""
    if not results_md.is_file():
        return
    text = results_md.read_text(encoding="utf-8")
    cut = text.find(RESULTS_HEADING)
    base = (text if cut < 0 else text[:cut]).rstrip() + "\n\n"
    results_md.write_text(base + "\n".join(results_section(out_dir)), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=list(NETWORKS), help="networks (default: unet resattunet)")
    ap.add_argument("--fold", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--variants", nargs="*", default=["labelled", "infnet-pseudo", "self-teacher"])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--eval-every", type=int, default=250, help="held-out Dice every this many steps (the curve)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "cv_semi")
    ap.add_argument("--runs", type=Path, default=Path("/tmp/covidseg-runs/semi_cv"), help="resumable run state")
    ap.add_argument("--report", type=Path, default=ROOT / "docs" / "SEMI_SUPERVISED.md")
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from docs/cv_semi/ and stop")
    args = ap.parse_args()
    if args.report_only:
        write_report(args.out, args.report)
        return
    torch.set_num_threads(args.threads)
    pairs = medseg_pairs(DATA)
    folds = contiguous_folds(len(pairs), args.folds)
    args.out.mkdir(parents=True, exist_ok=True)
    cache: dict = {}
    for arch in args.only:
        card0 = new_card(f"semi-{arch}", arch, NETWORKS[arch])
        if "data" not in cache:
            cache["data"] = load_medseg(DATA, card0, pairs)
        for fold in args.fold:
            for variant in args.variants:
                out = args.out / f"{arch}_{variant}_fold{fold}_steps{args.steps}.json"
                if out.exists():
                    print(f"{out.name}: done", flush=True)
                    continue
                extra = None
                if variant in ("infnet-pseudo", "self-teacher"):
                    if "pseudo" not in cache:
                        cache["pseudo"] = load_soft_lesions(PSEUDO, card0)
                    extra = cache["pseudo"]
                if variant == "self-teacher":
                    teacher = args.runs / f"{arch}_labelled_fold{fold}_steps{args.steps}" / STATE_NAME
                    if not teacher.is_file():
                        print(f"{out.name}: needs the labelled run of fold {fold} first ({teacher})", flush=True)
                        continue
                    extra = relabel(extra, arch, teacher, args.device)
                settings = TrainSettings(
                    steps=args.steps, batch_size=args.batch_size, lr=args.lr, crop=args.crop, seed=args.seed
                )
                run = args.runs / f"{arch}_{variant}_fold{fold}_steps{args.steps}"
                report, curve, seconds = train_and_score(
                    cache["data"], folds, fold, arch, variant, settings, extra, run, args
                )
                result = {
                    "architecture": arch,
                    "variant": variant,
                    "fold": fold,
                    "steps": args.steps,
                    "protocol": settings.protocol(extra),
                    "dice": report["dice"],
                    "curve": curve,
                    "held_out": report["held_out"],
                    "train_seconds": seconds,
                    "threads": args.threads,
                    "note": {
                        "labelled": "labelled MedSeg training folds only",
                        "infnet-pseudo": LEAK,
                        "self-teacher": "the 1600 slices relabelled by " + SELF,
                    }[variant],
                }
                out.write_text(json.dumps(json_safe(result), indent=1) + "\n")
                write_report(args.out, args.report)


if __name__ == "__main__":
    main()
