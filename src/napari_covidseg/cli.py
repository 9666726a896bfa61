"""`covidseg` command line: segment, classify, quantify, evaluate, train, finetune, train-classifier, models, sample,
demo.

Bad input (unreadable file, unknown model, wrong arguments) prints one line ``covidseg: error: ...`` and exits 2.
Progress bars go to stderr; results (JSON or tables) to stdout.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from napari_covidseg.constants import DEFAULT_BATCH_SIZE
from napari_covidseg.errors import InputError

EXIT_BAD_INPUT = 2
DEFAULT_SEGMENTATION_MODEL = "unet"
DEFAULT_CLASSIFICATION_MODEL = "daresnet18_3d"


class _Parser(argparse.ArgumentParser):
    def parse_known_args(self, args=None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)  # subcommand parsers get their own share
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> None:  # one readable line instead of usage + message
        argv = getattr(self, "_argv", [])
        # a file named like -scan.nii.gz is taken for an unknown option; say how to pass it
        dashed = [a for a in argv if _looks_like_dashed_file(a) and a.split("=")[0] not in self._option_string_actions]
        if dashed and "--" not in argv:
            message += f"; if {dashed[0]!r} is a file name, put it after '--'"
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _looks_like_dashed_file(arg: str) -> bool:
    """``-scan.nii.gz`` or ``-data/ct``: one dash, then something with a dot or a slash that is not a number."""
    if not arg.startswith("-") or arg.startswith("--") or not ("." in arg or "/" in arg):
        return False
    try:
        float(arg)
    except ValueError:
        return True
    return False


def _progress_bar(desc: str):
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit="step", file=sys.stderr, leave=False, dynamic_ncols=True, disable=None)

    def update(p) -> None:
        bar.total = p.total
        bar.set_description(f"{desc}: {p.stage}" if p.stage else desc)
        bar.n = p.done
        bar.refresh()

    return bar, update


def _model(args: argparse.Namespace, default: str, task: str):
    """Load the chosen model up front, so a bad name or checkpoint fails before any work starts."""
    from napari_covidseg.models.checkpoint import resolve_model

    loaded = resolve_model(Path(args.checkpoint) if args.checkpoint else (args.model or default), task=task)
    if loaded.card.notes:  # e.g. "demonstration weights": the user must see it next to the numbers
        print(f"covidseg: note: model {loaded.card.name!r}: {loaded.card.notes}", file=sys.stderr)
    return loaded


def _load(path: str):
    from napari_covidseg.io import load_ct

    volume = load_ct(path)
    for note in volume.meta.get("notes", []):
        print(f"covidseg: note: {note}", file=sys.stderr)
    return volume


def _check_outputs(args: argparse.Namespace, *outputs, inputs=()) -> None:
    """Every output checked before any work starts (writable, in a folder, not an input: see io/outputs.py)."""
    from napari_covidseg.io.outputs import check_outputs

    model_files = []
    if getattr(args, "checkpoint", None):
        weights = Path(args.checkpoint)
        model_files = [weights, weights.with_suffix(".json")]
    check_outputs(outputs, [*inputs, *model_files])


def cmd_segment(args: argparse.Namespace) -> int:
    from napari_covidseg.inference import segment_volume
    from napari_covidseg.inference.segment import MAX_BATCH_SIZE
    from napari_covidseg.io import save_labels
    from napari_covidseg.io.outputs import NIFTI_SUFFIXES, Output

    if not 1 <= args.batch_size <= MAX_BATCH_SIZE:
        raise InputError(f"--batch-size must be from 1 to {MAX_BATCH_SIZE}, got {args.batch_size}")
    _check_outputs(
        args,
        Output("-o", args.output, NIFTI_SUFFIXES),
        Output("--lungs-out", args.lungs_out, NIFTI_SUFFIXES),
        inputs=[args.input],
    )
    volume = _load(args.input)
    framing = _framing(args)
    if args.lungs_out and volume.intensity != "HU":
        raise InputError(f"--lungs-out needs a CT in Hounsfield units; {args.input} holds 8-bit display values")
    model = _model(args, DEFAULT_SEGMENTATION_MODEL, "segmentation")
    bar, update = _progress_bar("segment")
    with bar:
        seg = segment_volume(
            volume, model, device=args.device, batch_size=args.batch_size, framing=framing, progress=update
        )
    out = save_labels(seg.labels, like=volume, path=args.output)
    summary = {"output": str(out), **seg.summary(volume.spacing)}
    if args.lungs_out:
        summary["lungs_output"] = str(save_labels(seg.lungs, like=volume, path=args.lungs_out))
    _print_lesion_line(volume.name, summary)
    print(json.dumps(summary, indent=2))
    return 0


def _framing(args: argparse.Namespace) -> str:
    return "whole" if getattr(args, "whole_slice", False) else "auto"


def _print_lesion_line(name: str, summary: dict) -> None:
    """One plain line on stderr: where the lesions are, in ml and % of the lungs; then the notes."""
    from napari_covidseg.inference.segment import summary_sentences

    for note in summary["notes"]:
        print(f"covidseg: note: {note}", file=sys.stderr)
    inside, outside = summary_sentences(summary)
    print(f"covidseg: {name}: {inside}" + (f"; {outside}" if outside else ""), file=sys.stderr)


def cmd_classify(args: argparse.Namespace) -> int:
    from napari_covidseg.inference import classify_volume
    from napari_covidseg.io import save_array
    from napari_covidseg.io.outputs import NIFTI_SUFFIXES, Output

    _check_outputs(args, Output("--cam", args.cam, NIFTI_SUFFIXES), inputs=[args.input])
    volume = _load(args.input)
    model = _model(args, DEFAULT_CLASSIFICATION_MODEL, "classification")
    bar, update = _progress_bar("classify")
    with bar:
        result = classify_volume(volume, model, device=args.device, progress=update)
    summary = {
        "model": result.card.name,
        "predicted": result.predicted,
        "probabilities": {k: round(v, 4) for k, v in result.probabilities.items()},
        "cam_class": result.cam_class,
        "cam_region": result.cam_region,
        "cam_share_inside_region": round(result.cam_inside, 4),
        "device": result.device,
    }
    for note in result.notes:
        print(f"covidseg: note: {note}", file=sys.stderr)
    if args.cam:
        summary["cam"] = str(save_array(result.cam.astype("float32"), like=volume, path=args.cam))
    print(json.dumps(summary, indent=2))
    return 0


def cmd_quantify(args: argparse.Namespace) -> int:
    from napari_covidseg.analysis.quantify import iter_quantify, write_csv
    from napari_covidseg.inference.segment import run_generator

    if args.mask and (args.model or args.checkpoint):
        raise InputError("--mask gives the lesions; it cannot be combined with --model or --checkpoint")
    from napari_covidseg.io.outputs import NIFTI_SUFFIXES, Output

    _check_outputs(
        args,
        Output("--csv", args.csv),
        Output("--report", args.report),
        Output("--lungs-out", args.lungs_out, NIFTI_SUFFIXES),
        inputs=[args.input, args.mask],
    )
    volume = _load(args.input)
    if volume.intensity != "HU":
        raise InputError(
            f"{args.input}: quantification needs a CT in Hounsfield units (NIfTI or DICOM); this file holds "
            "display grey values (PNG/JPG), so lung volumes and HU bands cannot be measured"
        )
    card_summary = card_notes = ""
    class_names = None
    if args.mask:
        if args.whole_slice:
            raise InputError("--whole-slice changes how lesions are segmented; it cannot be combined with --mask")
        from napari_covidseg.io.labels import load_labels

        lesions = load_labels(args.mask)
        if lesions.shape != volume.shape:
            raise InputError(f"{args.mask}: mask shape {lesions.shape} does not match the CT {volume.shape}")
        made_by = f"mask: {Path(args.mask).name}"
    else:
        from napari_covidseg.inference import segment_volume

        model = _model(args, DEFAULT_SEGMENTATION_MODEL, "segmentation")
        bar, update = _progress_bar("segment")
        with bar:
            seg = segment_volume(volume, model, device=args.device, framing=_framing(args), progress=update)
        for note in seg.notes:
            print(f"covidseg: note: {note}", file=sys.stderr)
        lesions, made_by = seg.labels, seg.card.name
        card_summary, card_notes = seg.card.summary(), seg.card.notes
        class_names = {int(c["id"]): str(c["name"]) for c in seg.card.classes}
    bar, update = _progress_bar("quantify")
    with bar:
        q, lungs = run_generator(iter_quantify(volume, lesions, class_names=class_names, model=made_by), update)
    lesion_ml = sum(per_side["total"] for per_side in q.lesion_ml.values())
    print(
        f"covidseg: {q.name}: lungs {q.lung_ml['right']:.1f} ml right, {q.lung_ml['left']:.1f} ml left; lesions "
        f"{lesion_ml:.1f} ml = {q.involvement_pct['total']:.1f} % of the lungs (right {q.involvement_pct['right']:.1f}"
        f" %, left {q.involvement_pct['left']:.1f} %); severity score {q.severity} of 25; lesions from {made_by}",
        file=sys.stderr,
    )
    for note in q.notes:
        print(f"covidseg: note: {note}", file=sys.stderr)
    written = []
    if args.csv:
        written.append(write_csv(q, args.csv))
    if args.report:
        from napari_covidseg.analysis.report import render_report

        written.append(
            render_report(q, volume, lesions, lungs, args.report, card_summary=card_summary, card_notes=card_notes)
        )
    if args.lungs_out:
        from napari_covidseg.io import save_labels

        written.append(save_labels(lungs, like=volume, path=args.lungs_out))
    for path in written:
        print(f"covidseg: wrote {path}", file=sys.stderr)
    print(json.dumps(q.to_dict(), indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from napari_covidseg.analysis.evaluate import evaluate_folder

    report = evaluate_folder(
        Path(args.images),
        Path(args.masks),
        _model(args, DEFAULT_SEGMENTATION_MODEL, "segmentation"),
        device=args.device,
        per_image=args.per_image,
    )
    print(json.dumps(report, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from napari_covidseg.constants import LESION_CLASSES
    from napari_covidseg.models import get_architecture
    from napari_covidseg.models.checkpoint import check_new_model_name, save_checkpoint, user_models_dir
    from napari_covidseg.training.datasets import concat, load_dataset
    from napari_covidseg.training.run import TrainSettings, new_card, train_model

    try:
        arch = get_architecture(args.arch)
    except KeyError as exc:
        raise InputError(str(exc.args[0])) from None
    if arch.task != "segmentation" or arch.spatial_dims != 2:
        raise InputError(f"--arch {args.arch!r} is not a 2D segmentation network")
    out_dir = Path(args.out_dir) if args.out_dir else user_models_dir()
    _check_outputs(args, _model_folder(args))
    check_new_model_name(args.output, out_dir)
    _check_training_options(args, args.batch_size)
    _check_width(args)
    if not 16 <= args.size <= 1024 or (args.crop and not 16 <= args.crop <= args.size):
        raise InputError("need 16 <= --size <= 1024 and 16 <= --crop <= --size (0: no crop)")
    config = {"base_width": args.width}
    card = new_card(args.output, args.arch, config, num_classes=len(LESION_CLASSES), size=args.size)
    if args.extra_teacher and not args.extra:
        raise InputError("--extra-teacher relabels the --extra slices: give --extra FOLDER too")
    if args.extra and not (0 < args.extra_share < 1 and 0 <= args.extra_weight <= 100):
        raise InputError("need 0 < --extra-share < 1 and 0 <= --extra-weight <= 100")
    if not 0 <= args.checkpoint_minutes <= 24 * 60:
        raise InputError("--checkpoint-minutes must be from 0 to 1440")
    if args.run_dir:
        from napari_covidseg.io.outputs import Output

        _check_outputs(args, Output("--run-dir", args.run_dir, folder=True), inputs=[*args.data, *args.extra])
    data = concat([load_dataset(path, card) for path in args.data])
    n_classes = max(3, int(data.labels.max()) + 1)  # background, GGO, consolidation at least
    card = new_card(args.output, args.arch, config, num_classes=n_classes, size=args.size)
    extra = None
    if args.extra:
        from napari_covidseg.training.datasets import load_soft_lesions

        extra = concat([load_soft_lesions(path, card) for path in args.extra])
        if args.extra_teacher:
            from napari_covidseg.models.checkpoint import resolve_model
            from napari_covidseg.training.datasets import relabel_with_teacher

            teacher = resolve_model(args.extra_teacher, task="segmentation")
            extra = relabel_with_teacher(extra, teacher, device=args.device)
    print(f"covidseg: training {args.arch} on {len(data)} slices: {data.description}", file=sys.stderr)
    if extra is not None:
        print(f"covidseg: plus {len(extra)} slices with lesion-only targets: {extra.description}", file=sys.stderr)
    from tqdm import tqdm

    bar = tqdm(total=args.steps, desc="train", unit="step", file=sys.stderr, leave=False, disable=None)

    def progress(step: int, steps: int, loss: float) -> None:
        bar.n = step  # a resumed run starts where it stopped
        bar.set_postfix(loss=f"{loss:.3f}")
        bar.refresh()

    settings = TrainSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        crop=args.crop or None,
        schedule=args.schedule,
        seed=args.seed,
        extra_share=args.extra_share,
        extra_weight=args.extra_weight,
    )
    run_dir = Path(args.run_dir) if args.run_dir else None
    if run_dir is not None and (run_dir / "state.pt").is_file():
        print(f"covidseg: resuming the run in {run_dir}", file=sys.stderr)
    loaded, result = train_model(
        data,
        card,
        settings,
        device=args.device,
        progress=progress,
        extra=extra,
        run_dir=run_dir,
        checkpoint_seconds=60.0 * args.checkpoint_minutes,
    )
    bar.close()
    ckpt = save_checkpoint(loaded.module, card, out_dir)
    print(
        json.dumps(
            {
                "model": card.name,
                "weights": str(ckpt.weights),
                "steps": result.steps,
                "seconds": round(result.seconds, 1),
                "loss_first_50": sum(result.losses[:50]) / len(result.losses[:50]),
                "loss_last_50": sum(result.losses[-50:]) / len(result.losses[-50:]),
            },
            indent=2,
        )
    )
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_covidseg.models.checkpoint import resolve_model
    from napari_covidseg.training.finetune import FinetuneSettings, iter_finetune, suggest_name

    out_dir = Path(args.out_dir) if args.out_dir else None
    _check_outputs(args, _model_folder(args))
    _check_training_options(args, args.batch_size)
    base = resolve_model(args.base, task="segmentation")  # a bad name fails before anything else
    name = args.output or suggest_name(base.card.name, out_dir)
    settings = FinetuneSettings(steps=args.steps, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    gen = iter_finetune(base, Path(args.data), name, settings, device=args.device, out_dir=out_dir)
    next(gen)  # the name, settings and folder are checked here, before the first message
    print(f"covidseg: fine-tuning {base.card.name} on {args.data} as {name!r}", file=sys.stderr)
    bar = tqdm(total=args.steps, desc="finetune", unit="step", file=sys.stderr, leave=False, disable=None)
    try:
        while True:
            p = next(gen)
            bar.set_description(f"finetune: {p.stage}")
            bar.n = p.done
            if p.loss is not None:
                bar.set_postfix(loss=f"{p.loss:.3f}")
            bar.refresh()
    except StopIteration as done:
        result = done.value
    finally:
        bar.close()
    print(
        json.dumps(
            {
                "name": result.checkpoint.name,
                "path": str(result.checkpoint.weights),
                "parent": result.checkpoint.card.training["parent"],
                "steps": len(result.losses),
                "seconds": round(result.seconds, 1),
                "before": result.before,
                "after": result.after,
                "evaluated_on": result.evaluated_on,
                "train_keys": len(result.train_keys),
                "held_back": result.test_keys,
            },
            indent=2,
        )
    )
    return 0


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from napari_covidseg.models.checkpoint import user_models_dir
    from napari_covidseg.training.classifier import format_loo_table, parse_size, run_train_classifier

    _check_training_options(args, 1)
    _check_width(args)
    _check_outputs(args, _model_folder(args))
    out_dir = Path(args.out_dir) if args.out_dir else user_models_dir()
    run = run_train_classifier(
        args.data,
        args.output,
        steps=args.steps,
        size=parse_size(args.size),
        width=args.width,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        out_dir=out_dir,
        loo=args.loo,
        log=lambda message: print(f"covidseg: {message}", file=sys.stderr, flush=True),
    )
    if run.loo_rows:
        print(format_loo_table(run.loo_rows))
    print(json.dumps(run.summary, indent=2))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from napari_covidseg.models import list_architectures
    from napari_covidseg.models.checkpoint import list_checkpoints

    skipped: list[str] = []
    checkpoints = list_checkpoints(skipped=skipped)
    for line in skipped:
        print(f"covidseg: note: model card skipped: {line}", file=sys.stderr)
    print("Architectures (name, task, paper) and the trained weights installed for each:")
    for arch in list_architectures():
        print(f"\n{arch.name}  [{arch.task}, {arch.spatial_dims}D]  {arch.summary}")
        if arch.paper:
            print(f"    paper: {arch.paper}")
        mine = [c for c in checkpoints if c.card.architecture == arch.name]
        for c in mine:
            where = "bundled" if c.bundled else "user"
            print(f"    weights {c.name!r} ({where}): {c.card.summary()}")
            if c.card.notes:
                print(f"        note: {c.card.notes}")
        if not mine:
            print("    weights: none installed (untrained; segment/classify need --checkpoint)")
    return 0


def cmd_corrections(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from napari_covidseg.corrections import default_corrections_dir, list_corrections

    folder = Path(args.folder) if args.folder else default_corrections_dir()
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder (no corrections saved there yet?)")
    notes: list[str] = []
    entries = list_corrections(folder, notes)
    for note in notes:
        print(f"covidseg: note: {note}", file=sys.stderr)
    print(json.dumps([asdict(e) for e in entries], indent=2))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from napari_covidseg.sample import write_sample

    try:
        shape = tuple(int(v) for v in args.shape.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"--shape must be three positive integers z,y,x, got {args.shape!r}")
    if min(shape[1:]) < 32 or max(shape) > 4096:
        raise InputError(f"--shape {args.shape}: slices must be 32 to 4096 pixels a side and at most 4096 slices")
    from napari_covidseg.memory import check_fits
    from napari_covidseg.units import dims, volume_bytes

    check_fits(volume_bytes(shape, 16), f"a {dims(shape)} phantom")  # CT, masks and the working copies
    from napari_covidseg.io.outputs import Output, check_outputs

    check_outputs([Output("-o", args.output, folder=True)])
    paths = write_sample(Path(args.output), seed=args.seed, shape=shape)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from napari_covidseg._demo import run_demo
    except ImportError as exc:  # the core installs without napari
        raise InputError(f"the demo needs napari: pip install 'napari-covidseg[napari]' ({exc})") from exc
    if args.image is not None and not Path(args.image).exists():
        raise InputError(f"{args.image}: no such file or folder")
    if args.screenshot and not args.screenshot.lower().endswith((".png", ".jpg", ".jpeg")):
        raise InputError(f"--screenshot must end in .png or .jpg, got {args.screenshot!r}")
    return run_demo(
        args.image,
        run=args.run,
        compare=args.compare,
        correct=args.correct,
        quantify=args.quantify,
        screenshot=args.screenshot,
        device=args.device,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="covidseg", description="COVID-19 chest-CT lesion segmentation and classification.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def model_args(p: argparse.ArgumentParser, default: str) -> None:
        group = p.add_mutually_exclusive_group()
        group.add_argument("--model", help=f"installed model name (default: {default}; see `covidseg models`)")
        group.add_argument("--checkpoint", help="a .safetensors file with its .json model card beside it")
        p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")

    def whole_slice_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--whole-slice",
            action="store_true",
            help="segment each whole slice instead of lung-first (default for HU scans: find the lungs, crop each "
            "slice to them as the training slices are framed, keep lesions only inside the lungs)",
        )

    p = sub.add_parser("segment", help="segment lesions slice by slice; writes a NIfTI label map")
    p.add_argument("input", help="NIfTI file, DICOM folder or file, PNG/JPG slice(s) or .npy")
    p.add_argument("-o", "--output", required=True, help="output label map (.nii.gz), same geometry as the input")
    p.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="slices per forward pass (memory grows with it)"
    )
    p.add_argument("--lungs-out", help="also write the lung mask (.nii.gz; 1 right, 2 left lung)")
    whole_slice_arg(p)
    model_args(p, DEFAULT_SEGMENTATION_MODEL)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("classify", help="COVID-19 / common pneumonia / normal for a whole volume, with CAM")
    p.add_argument("input")
    p.add_argument("--cam", help="write the class-activation map as NIfTI (.nii.gz) on the CT grid")
    model_args(p, DEFAULT_CLASSIFICATION_MODEL)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser(
        "quantify", help="lung and lesion volumes, %% involvement, 0-25 severity score; optional CSV and HTML report"
    )
    p.add_argument("input", help="CT in Hounsfield units: NIfTI file, DICOM folder or file, or .npy")
    p.add_argument("--mask", help="lesion label map on the CT grid (NIfTI, .npy, PNG) instead of segmenting")
    p.add_argument("--csv", help="write every measure as CSV (measure, region, class, value, unit)")
    p.add_argument("--report", help="write a one-page HTML report (self-contained: tables, chart, key slices)")
    p.add_argument("--lungs-out", help="write the lung mask measured against (.nii.gz; 1 right, 2 left)")
    whole_slice_arg(p)
    model_args(p, DEFAULT_SEGMENTATION_MODEL)
    p.set_defaults(func=cmd_quantify)

    p = sub.add_parser("evaluate", help="segment every image in a folder and score it against same-stem masks")
    p.add_argument("--images", required=True, help="folder of slice images or volumes")
    p.add_argument("--masks", required=True, help="folder of reference masks named like the images")
    p.add_argument("--per-image", action="store_true", help="also list each image's scores")
    model_args(p, DEFAULT_SEGMENTATION_MODEL)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train a segmentation model on MedSeg slices, NIfTI pairs or corrections")
    p.add_argument("data", nargs="+", help="folders: MedSeg layout (Imgs/ + GT/) or images/ + masks/ (corrections)")
    p.add_argument("-o", "--output", required=True, help="name of the new model (never overwrites one)")
    p.add_argument("--arch", default="unet", help="2D segmentation architecture (see `covidseg models`)")
    p.add_argument("--width", type=int, default=16, help="base width (channels of the first stage)")
    p.add_argument("--size", type=int, default=192, help="network input side in pixels")
    p.add_argument("--crop", type=int, default=96, help="random training crop side (0: whole slice)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", choices=("cosine", "plateau"), default="cosine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", help="where to write the model (default: the user models folder)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    p.add_argument(
        "--extra",
        action="append",
        default=[],
        help="folder of extra slices with soft or hard lesion masks (Imgs/ + GT/, e.g. Inf-Net's pseudo-labels, or "
        "images/ + masks/): they supervise lesion vs not only; repeat for several folders",
    )
    p.add_argument(
        "--extra-teacher",
        metavar="MODEL",
        help="self-training: replace the --extra masks by this segmentation model's lesion probability (an "
        "installed model name or a checkpoint; a teacher that saw your validation slices leaks them)",
    )
    p.add_argument("--extra-share", type=float, default=0.5, help="fraction of each batch from --extra (default 0.5)")
    p.add_argument("--extra-weight", type=float, default=0.5, help="weight of the --extra loss (default 0.5)")
    p.add_argument(
        "--run-dir",
        help="resumable run: a checkpoint is written there every --checkpoint-minutes; the same command resumes it "
        "(keep it outside the repository)",
    )
    p.add_argument("--checkpoint-minutes", type=float, default=5.0, help="minutes between run checkpoints")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("finetune", help="fine-tune a segmentation model on a corrections folder (a new model)")
    p.add_argument("--base", required=True, help="installed segmentation model to start from (see `covidseg models`)")
    p.add_argument("--data", required=True, help="corrections folder: images/ + masks/ with one slice per file")
    p.add_argument("-o", "--output", help="name of the new model (default: BASE-ftN, the first free N)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", help="where to write the model (default: the user models folder)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("train-classifier", help="train a 3D COVID-19 / pneumonia / normal classifier on CT volumes")
    p.add_argument(
        "data", nargs="+", help="volumes or folders; class from the folder or file-name prefix (COVID-19, CAP, normal)"
    )
    p.add_argument("-o", "--output", required=True, help="name of the new model (never overwrites one)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--size", default="32,96,96", help="network input D,H,W in voxels (default 32,96,96)")
    p.add_argument("--width", type=int, default=8, help="base width (channels of the first stage)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--out-dir", help="where to write the model (default: the user models folder)")
    p.add_argument(
        "--loo", action="store_true", help="first run leave-one-out (a pipeline check) and store it in the card"
    )
    p.set_defaults(func=cmd_train_classifier)

    p = sub.add_parser("demo", help="open napari with a CT (default: the phantom) and the segment/classify docks")
    p.add_argument("image", nargs="?", help="NIfTI file, DICOM folder or file, PNG/JPG (default: the phantom)")
    p.add_argument("--run", action="store_true", help="segment and classify right away with the bundled models")
    p.add_argument(
        "--compare",
        action="store_true",
        help="also dock the model comparison; --run then runs it instead of segment + classify",
    )
    p.add_argument("--correct", action="store_true", help="also dock Correct segmentation and Fine-tune on corrections")
    p.add_argument("--quantify", action="store_true", help="also dock Quantify lung involvement")
    p.add_argument("--screenshot", help="save a PNG of the whole window (after --run finishes) and exit")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", help="list architectures and installed weights with their model cards")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("corrections", help="list the corrected slices in a corrections folder (repairs its index)")
    p.add_argument("action", choices=("list",), help="list: one JSON entry per indexed image/mask pair")
    p.add_argument("folder", nargs="?", help="corrections folder (default: the one the Correct dock uses)")
    p.set_defaults(func=cmd_corrections)

    p = sub.add_parser("sample", help="write the synthetic phantom CT with its lesion and lung masks (NIfTI)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", default="48,256,256", help="z,y,x voxels (default 48,256,256)")
    p.set_defaults(func=cmd_sample)
    return parser


CLI_TRAIN_NAMES = ("--lr", "--steps", "--batch-size")


class Terminated(BaseException):
    """SIGTERM as an exception, so that ``finally`` blocks remove temporary files before the process ends."""


def _check_training_options(args: argparse.Namespace, batch_size: int) -> None:
    from napari_covidseg.training.loop import check_hyperparameters

    check_hyperparameters(args.lr, args.steps, batch_size, names=CLI_TRAIN_NAMES)
    if args.lr == 0:
        raise InputError("--lr 0 would leave the model as it is; give a positive learning rate (e.g. 3e-4)")


def _model_folder(args: argparse.Namespace):
    """The folder a new model goes to, as an output to check (None: the user models folder)."""
    from napari_covidseg.io.outputs import Output

    return Output("--out-dir", args.out_dir, folder=True)


def _check_width(args: argparse.Namespace) -> None:
    from napari_covidseg.models.schema import RANGES

    lo, hi = RANGES["base_width"]
    if not lo <= args.width <= hi:
        raise InputError(f"--width must be from {lo:g} to {hi:g} channels, got {args.width}")


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): return the code instead of exiting
        return int(exc.code or 0)
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (main() called from a worker): leave signals alone
        previous = None
    try:
        return _run(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "device", None) not in (None, "auto"):  # a bad --device fails before any work
            from napari_covidseg.inference.device import resolve_device

            resolve_device(args.device)
        return args.func(args)
    except InputError as exc:  # includes CheckpointError
        print(f"covidseg: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # a path that cannot be read or written: permissions, a full disk, a name too long
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"covidseg: error: {where}{(exc.strerror or str(exc)).lower()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("covidseg: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("covidseg: terminated (SIGTERM); nothing partial was left behind", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
