"""Train the bundled *demonstration* `daresnet18_3d` classifier weights on the 6-volume COVID-CT-MD sample.

Six volumes (2 COVID-19, 2 common pneumonia, 2 normal) cannot train or measure a diagnostic model. These weights
exist so that `covidseg classify` runs with no flags and the training pipeline is exercised end to end on real CT.
First a leave-one-out run (6 folds, each a fresh model trained on the other 5) checks the pipeline, then final
weights are trained on all 6. Writes the weights + card and docs/CLASSIFIER.md.

    .venv/bin/python scripts/train_classifier_demo.py --overwrite   # writes src/napari_covidseg/weights/daresnet18_3d.*
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections import Counter
from pathlib import Path

import torch

from napari_covidseg.constants import DIAGNOSIS_CLASSES
from napari_covidseg.models.checkpoint import BUNDLED_DIR, save_checkpoint
from napari_covidseg.training.classifier import (
    BATCH_SIZE,
    classifier_card,
    find_volumes,
    format_loo_table,
    leave_one_out,
    load_examples,
    loo_metrics,
    new_model,
    predict,
    train_classifier,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "covid_ct_md_sample" / "volumes_256"
NAME = "daresnet18_3d"
NOTES = (
    "demonstration weights trained on 6 volumes; the LOO result is a pipeline check, not an accuracy claim; "
    "do not use for diagnosis"
)
DATA_TEXT = (
    "COVID-CT-MD sample (Afshar et al., Sci Data 2021, doi:10.1038/s41597-021-00900-3): 6 chest-CT volumes, "
    "2 COVID-19, 2 CAP (common pneumonia), 2 normal; in-plane 2x2-binned to 256x256, int16 HU"
)


def _log(message: str) -> None:
    print(message, flush=True)


def _progress(prefix: str, every: int):
    def report(step: int, total: int, loss: float) -> None:
        if step % every == 0 or step == total:
            _log(f"{prefix}: step {step}/{total} loss {loss:.4f}")

    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA, help="folder of the 6 volumes (class in the file name)")
    ap.add_argument("--steps", type=int, default=150, help="training steps per model (6 LOO folds + final)")
    ap.add_argument("--size", default="32,96,96", help="network input D,H,W")
    ap.add_argument("--width", type=int, default=8, help="base width of the network")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch (1 keeps it cheap)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=BUNDLED_DIR)
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "CLASSIFIER.md")
    ap.add_argument("--overwrite", action="store_true", help="replace existing weights of the same name")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    size = [int(v) for v in args.size.split(",")]
    start = time.perf_counter()

    found = find_volumes([args.data])
    counts = Counter(DIAGNOSIS_CLASSES[c] for _, c in sorted(found, key=lambda f: f[1]))
    training = {
        "data": DATA_TEXT,
        "files": [p.name for p, _ in found],
        "protocol": f"{args.steps} steps, batch {BATCH_SIZE}, Adam lr {args.lr} cosine, cross-entropy, "
        "class-balanced sampling, left-right flip / shift / intensity jitter; trained on all 6 volumes",
        "script": "scripts/train_classifier_demo.py",
        "date": dt.date.today().isoformat(),
        "seed": args.seed,
        "device": args.device,
        "threads": args.threads,
    }
    card = classifier_card(NAME, size, args.width, training, {}, NOTES)
    card.version = "0.1.0-demo"
    examples = load_examples(found, card, _log)
    t_loaded = time.perf_counter()

    rows = leave_one_out(
        examples,
        card,
        steps=args.steps,
        seed=args.seed,
        device=args.device,
        lr=args.lr,
        progress=_progress("LOO", args.steps),
    )
    card.metrics = loo_metrics(rows)
    t_loo = time.perf_counter()
    table = format_loo_table(rows)
    predicted = Counter(r["predicted"] for r in rows)
    if len(predicted) == 1:
        table += (
            f" Every held-out volume was predicted {next(iter(predicted))!r}: with 5 training volumes the folds "
            "learn no usable distinction."
        )
    print(table, flush=True)

    model = new_model(card, args.seed)
    history = train_classifier(
        model,
        torch.stack([e.x for e in examples]),
        torch.tensor([e.target for e in examples]),
        steps=args.steps,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        progress=_progress("final", max(1, args.steps // 5)),
    )
    card.training["final_loss"] = round(sum(history.losses[-10:]) / len(history.losses[-10:]), 4)
    card.training["seconds"] = round(history.seconds, 1)
    fitted = sum(
        int(torch.tensor(predict(model, e.x, args.device)).argmax()) == e.target for e in examples
    )  # training-set fit only: that the final model learned its own 6 volumes
    card.training["training_set_fit"] = f"{fitted}/{len(examples)} training volumes predicted as their own class"
    ckpt = save_checkpoint(model.cpu(), card, args.out, overwrite=args.overwrite)
    t_end = time.perf_counter()
    size_mb = ckpt.weights.stat().st_size / 1e6

    timing = (
        f"loading + preparing {len(examples)} volumes {t_loaded - start:.0f} s, leave-one-out "
        f"({len(examples)} models) {t_loo - t_loaded:.0f} s, final model {t_end - t_loo:.0f} s; total "
        f"{t_end - start:.0f} s on {args.device} with {args.threads} torch thread(s)"
    )
    doc = f"""# The bundled 3D classifier (`{NAME}`): demonstration weights

**{NOTES}.**

The bundled `{NAME}` weights (dual-attention 3D ResNet18, Shi et al. 2021, base width {args.width}, input
{"x".join(map(str, size))} voxels D x H x W, {size_mb:.1f} MB) let `covidseg classify` run without flags. They are
trained on the six-volume COVID-CT-MD sample only: {", ".join(f"{n} {k}" for k, n in counts.items())}. Six volumes
can neither train nor measure a diagnostic model.

## Data

{DATA_TEXT}. The class of each volume is taken from its file name
(`napari_covidseg.training.classifier.class_from_path`). Each volume is prepared exactly as `covidseg classify`
prepares it: lung window -1350..150 HU scaled to 0..1, cropped to the body, resized to
{"x".join(map(str, size))}.

## Leave-one-out (pipeline check)

Protocol: {card.metrics["protocol"]}. Each fold: {args.steps} steps, batch {BATCH_SIZE}, Adam lr {args.lr} with a
cosine schedule, cross-entropy, class-balanced sampling, left-right flip / shifts of a few voxels / intensity jitter,
seed {args.seed}. In every fold the held-out volume's class has a single training volume left, and chance is 1/3.
Whatever the count below, it says that the pipeline runs end to end, not how well the model diagnoses.

{table}

## Final weights

Trained the same way on all 6 volumes; mean loss of the last 10 steps {card.training["final_loss"]};
{card.training["training_set_fit"]} (training-set fit, which shows only that the model learned its own data).
Written to `src/napari_covidseg/weights/{NAME}.safetensors` + `{NAME}.json` (model card with the LOO rows in
`metrics`).

Time: {timing}.

## Regenerate

```
.venv/bin/python scripts/train_classifier_demo.py --overwrite
```

The same training on your own data (folders or file names COVID-19 / CAP / normal):

```
covidseg train-classifier DATA_FOLDER -o my-classifier --loo
```
"""
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(doc, encoding="utf-8")
    _log(f"wrote {ckpt.weights} ({size_mb:.2f} MB) and {args.doc}")
    _log(timing)


if __name__ == "__main__":
    main()
