"""A CLIP that the platform trains itself on the warehouse's image-caption pairs, with open_clip's
own training code (open_clip_train), for when no pretrained image tower can be downloaded: its
weights then serve as a feature backbone (`mvp features --backbone <model> --pretrained <file>`).

The pairs go to a TSV that open_clip_train's csv loader reads; training runs as a child process
(open_clip_train configures the root logger and reads sys.argv-style flags) and resumes from its
latest epoch when rerun on the same folder. The result is the bare state dict as safetensors:
loading it runs no code, and its bytes name the feature set (features/backbone.py)."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import torch
from pandas._libs.parsers import STR_NA_VALUES  # what pd.read_csv reads as missing

from warehouse.catalog import connect
from warehouse.store import Warehouse

DEFAULT_MODEL = "mvp-clip-small"   # features/model_configs: a ViT sized for CPU minutes
RUN_NAME = "clip-bootstrap"        # open_clip_train's experiment folder under <out_dir>


def export_pairs(warehouse, path: Path, split: str = "train", dataset: str | None = None
                 ) -> dict[str, int]:
    """Every caption of the split with its image file, as open_clip_train's TSV (filepath,
    title); whitespace in captions collapses to single spaces, so a row is one line. Captions
    that pandas would read as missing ("NA", "null", "") are left out: open_clip_train's loader
    would fail on them. Returns {"pairs", "skipped"}."""
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    with connect(wh) as con:
        rows = con.execute(
            "SELECT i.path, c.text FROM captions c JOIN images i ON i.id = c.image_id "
            "WHERE c.split = ? AND (? IS NULL OR c.dataset = ?) ORDER BY c.id",
            [split, dataset, dataset]).fetchall()
    if not rows:
        raise LookupError(f"no captions of split {split!r} in {wh.root}: nothing to train on")
    pairs = [(image, " ".join(text.split())) for image, text in rows]
    kept = [(image, text) for image, text in pairs if text not in STR_NA_VALUES]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        out = csv.writer(f, delimiter="\t")
        out.writerow(["filepath", "title"])
        out.writerows(kept)
    return {"pairs": len(kept), "skipped": len(pairs) - len(kept)}


def train_args(pairs: Path, out_dir: Path, model: str, epochs: int, batch_size: int, lr: float,
               warmup: int, seed: int, workers: int, device: str) -> list[str]:
    """open_clip_train's flags for this run: fp32, no evaluation or reporting, a checkpoint per
    epoch and `--resume latest`, so a killed run continues from its last epoch."""
    return ["--train-data", str(pairs), "--dataset-type", "csv", "--csv-img-key", "filepath",
            "--csv-caption-key", "title", "--model", model, "--epochs", str(epochs),
            "--batch-size", str(batch_size), "--lr", str(lr), "--warmup", str(warmup),
            "--seed", str(seed), "--workers", str(workers), "--device", device,
            "--precision", "fp32", "--logs", str(out_dir), "--name", RUN_NAME,
            "--resume", "latest", "--save-frequency", "1", "--zeroshot-frequency", "0",
            "--val-frequency", "0", "--report-to", "", "--log-every-n-steps", "10"]


def bootstrap_clip(warehouse, out_dir, model: str = DEFAULT_MODEL, epochs: int = 5,
                   batch_size: int = 64, lr: float = 5e-4, warmup: int = 50, seed: int = 0,
                   split: str = "train", dataset: str | None = None, workers: int = 0,
                   device: str | None = None) -> dict:
    """Train `model` contrastively on the split's pairs and write its weights to
    <out_dir>/<model>-bootstrap.safetensors. Returns {"weights", "model", "epochs", "pairs",
    "skipped"}."""
    out_dir = Path(out_dir).resolve()
    pairs = out_dir / "pairs.tsv"
    exported = export_pairs(warehouse, pairs, split, dataset)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    args = train_args(pairs, out_dir, model, epochs, batch_size, lr, warmup, seed, workers, device)
    subprocess.run([sys.executable, "-m", "features.clip_bootstrap", *args], check=True)
    checkpoint = out_dir / RUN_NAME / "checkpoints" / f"epoch_{epochs}.pt"
    weights = out_dir / f"{model}-bootstrap.safetensors"
    export_weights(checkpoint, weights)
    return {"weights": str(weights), "model": model, "epochs": epochs, **exported}


def export_weights(checkpoint: Path, target: Path) -> None:
    """The state dict of an open_clip_train checkpoint (read weights-only), without the optimizer
    and DDP's `module.` prefix, as safetensors."""
    from safetensors.torch import save_file
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    state = {k.removeprefix("module."): v.contiguous() for k, v in state.items()}
    tmp = target.with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.replace(target)   # atomic: a reader sees the old weights or the new, never half


if __name__ == "__main__":   # the child process: our model configs, then open_clip_train
    from open_clip_train.main import main

    from features.backbone import register_configs
    register_configs()
    sys.exit(main(sys.argv[1:]) or 0)
