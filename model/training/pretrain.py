"""One pre-training stage as a job: warehouse data -> Trainer -> checkpoints, tracked in MLflow
(`python -m model.training.pretrain --help`; under torchrun for several processes)."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch

from features.feature_sets import list_feature_sets
from features.vocabulary import latest_vocab
from model.config import DEFAULT_PRESET, ModelConfig, load_config
from model.mvp import MVP
from model.training import distributed, tracking
from model.training.checkpoint import load_weights
from model.training.config import STAGES, load_train_config, train_override
from model.training.data import PretrainData
from model.training.diagnostics import diagnose
from model.training.feature_cache import build_cache, cached_data
from model.training.progress import Progress
from model.training.task import PretrainTask
from model.training.trainer import Trainer
from warehouse.catalog import connect
from warehouse.store import Warehouse
from warehouse.version import code_version

EXPERIMENT = "mvp-pretrain"


def pick_feature_set(wh: Warehouse, feature_set: str | None):
    specs = list_feature_sets(wh)
    if feature_set is None:
        if not specs:
            raise LookupError(f"no feature set in warehouse {wh.root}: run `mvp features` first")
        return specs[-1]  # ordered by creation: the latest
    for spec in specs:
        if spec.id == feature_set:
            return spec
    raise LookupError(f"no feature set {feature_set!r} in warehouse {wh.root}; registered: "
                      f"{', '.join(s.id for s in specs) or 'none'}")


def n_concepts(wh: Warehouse, vocab: str) -> int:
    with connect(wh) as con:
        n = con.execute("SELECT max(id) + 1 FROM concepts WHERE vocab = ?", [vocab]).fetchone()[0]
    if not n:
        raise LookupError(f"no concept vocabulary {vocab!r} in warehouse {wh.root}")
    return int(n)


def model_config(wh: Warehouse, config: str, feature_set: str | None, vocab: str | None,
                 overrides: dict | None = None) -> ModelConfig:
    """The preset's model config (updated by `overrides`) for this warehouse's feature set and
    vocabulary (default: the latest of each)."""
    spec = pick_feature_set(wh, feature_set)
    vocab = vocab or latest_vocab(wh)
    if vocab is None:
        raise LookupError(f"no concept vocabulary in warehouse {wh.root}: run `mvp concepts`")
    return load_config(config, **(overrides or {}), feat_dim=spec.dim,
                       n_concepts=n_concepts(wh, vocab), feature_set=spec.id, vocab_version=vocab)


def prepare_cache(warehouse, config: str = DEFAULT_PRESET, feature_set: str | None = None,
                  vocab: str | None = None, split: str | None = "train",
                  dataset: str | None = None) -> dict:
    """Build the feature cache `pretrain(feature_cache=True)` reads with this config; returns its
    folder and record."""
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    cfg = model_config(wh, config, feature_set, vocab)
    folder = build_cache(wh, cfg.feature_set, cfg.vocab_version, cfg, split, dataset)
    record = json.loads((folder / "meta.json").read_text())
    return {"folder": str(folder), **{k: v for k, v in record.items() if k != "arrays"},
            "captions": record["arrays"]["image_of"]["shape"][0],
            "regions": record["arrays"]["vectors"]["shape"][0],
            "bytes": sum(f.stat().st_size for f in folder.iterdir())}


def pretrain(warehouse, stage: str, config: str = DEFAULT_PRESET, feature_set: str | None = None,
             vocab: str | None = None, steps: int | None = None, out_dir="runs/pretrain",
             resume: bool = False, init_from=None, tracking_uri: str | None = None,
             seed: int | None = None, checkpoint_every: int = 500,
             device: str | None = None, train_overrides: dict | None = None,
             run_name: str | None = None, experiment: str = EXPERIMENT,
             parent_run_id: str | None = None, diagnose_every: int = 50,
             feature_cache: bool = False, reshard: bool = False,
             model_overrides: dict | None = None) -> dict:
    """Train `stage` up to global step `steps` (default: the config's total_steps; the lr schedule
    follows total_steps regardless, so a run stopped and resumed ends as one that never stopped).
    `seed` (default: the config's) seeds the model init, the task's masks and the data order;
    `train_overrides` update the preset's `train:` section. The checkpoint is
    <out_dir>/<stage>/last.pt (give variants of one stage their own out_dir); `resume` continues
    it, in the same MLflow run. stage2 starts from <out_dir>/stage1/last.pt unless told otherwise.
    `diag/*` metrics every `diagnose_every` steps and at the end (0: never). `feature_cache`
    reads the train split through model/training/feature_cache.py (built once per data).
    `reshard` resumes a checkpoint of another number of processes (Trainer.load);
    `model_overrides` update the preset's `model:` section (an architecture variant)."""
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    cfg = model_config(wh, config, feature_set, vocab, model_overrides)
    spec, vocab = pick_feature_set(wh, cfg.feature_set), cfg.vocab_version
    overrides = {**(train_overrides or {}), "stage": stage}
    if seed is not None:
        overrides["seed"] = seed
    tcfg = load_train_config(config, **overrides)
    stop = tcfg.total_steps if steps is None else steps
    device = device or distributed.default_device()

    ckpt = Path(out_dir) / stage / "last.pt"
    if stage == "stage2" and init_from is None and not resume:
        init_from = Path(out_dir) / "stage1" / "last.pt"  # the usual two-stage layout
        if not init_from.exists():
            raise FileNotFoundError(f"stage2 starts from a stage-1 checkpoint: pass init_from "
                                    f"(none at {init_from})")
    if stage == "retrieval" and init_from is None and not resume:
        raise ValueError("retrieval fine-tunes a pre-trained model: pass init_from (or resume)")

    data = (cached_data(wh, spec.id, vocab, cfg, "train") if feature_cache
            else PretrainData(wh, spec.id, vocab, cfg, split="train"))
    if len(data) == 0:
        raise LookupError(f"no training captions with features in {spec.id}")
    torch.manual_seed(tcfg.seed)  # model init: the same on every rank
    trainer = Trainer(PretrainTask(MVP(cfg), tcfg), tcfg, device=device)
    torch.manual_seed(tcfg.seed + distributed.rank())  # dropout: each rank its own
    # the checkpoint's data position, so a resumed run picks up the data order and its MLflow run
    # majority_word: the train split's most frequent word, MLM's baseline in evaluation, so
    # that evaluating never reads the whole train split again
    position = {"epoch": 0, "index": 0, "mlflow_run_id": None,
                "majority_word": data.majority_word()}
    if resume:
        if not ckpt.exists():
            raise FileNotFoundError(f"nothing to resume: no checkpoint {ckpt}")
        position.update(trainer.load(ckpt, reshard=reshard) or {})
    elif init_from is not None:
        load_weights(trainer.task, init_from)

    main = distributed.is_main()
    run, new_run = (tracking.start_run(experiment, run_name or stage, tracking_uri,
                                       run_id=position["mlflow_run_id"],
                                       parent_run_id=parent_run_id)
                    if main else (contextlib.nullcontext(), False))
    mlflow = tracking.mlflow
    with run:
        if main:
            position["mlflow_run_id"] = run.info.run_id
        if new_run:
            mlflow.log_params({**{f"model.{k}": v for k, v in cfg.to_dict().items()},
                               **{f"train.{k}": v for k, v in tcfg.to_dict().items()},
                               "train.losses": ",".join(tcfg.losses),
                               "config": str(config), "init_from": str(init_from),
                               "n_train_captions": len(data),
                               "world_size": distributed.world_size()})
            mlflow.set_tags({"feature_set": spec.id, "vocab": vocab, "stage": stage,
                             "git_commit": code_version()})
            mlflow.log_dict({"model": cfg.to_dict(), "train": tcfg.to_dict()}, "config.yaml")
        progress = Progress(run_name or stage, stop, start=trainer.step,
                            keys=("loss",) + tcfg.losses)

        def on_step(step: int, last: dict, group: list) -> None:
            if not main:
                return
            mlflow.log_metrics(last, step=step)
            if diagnose_every and (step % diagnose_every == 0 or step == stop):
                mlflow.log_metrics(diagnose(trainer.task, group[0].to(trainer.device), step),
                                   step=step)
            progress.step(step, last)

        final = trainer.run(data, position, stop, ckpt, checkpoint_every, on_step)
        trainer.save(ckpt, data_position=position)
        if main:
            mlflow.log_artifact(str(ckpt), artifact_path="checkpoints")
        return {"stage": stage, "steps": trainer.step, "checkpoint": str(ckpt),
                "run_id": position["mlflow_run_id"], "final": final}


def main(argv: list[str] | None = None) -> int:
    """`python -m model.training.pretrain ...`, also under
    `torchrun --nproc_per_node N -m model.training.pretrain`; prints the result as JSON (rank 0)."""
    p = argparse.ArgumentParser(prog="python -m model.training.pretrain",
                                description="Run one pre-training stage, tracked in MLflow.")
    p.add_argument("--warehouse", required=True)
    p.add_argument("--stage", required=True, choices=STAGES)
    p.add_argument("--config", default=DEFAULT_PRESET, help="preset name or YAML path")
    p.add_argument("--steps", type=int, help="stop at this global step")
    p.add_argument("--out-dir", default="runs/pretrain")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--init-from", help="checkpoint whose weights the stage starts from")
    p.add_argument("--feature-set")
    p.add_argument("--vocab")
    p.add_argument("--seed", type=int)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--reshard", action="store_true",
                   help="resume a checkpoint written by another number of processes")
    p.add_argument("--feature-cache", action="store_true",
                   help="read the train split through the memory-mapped feature cache")
    p.add_argument("--device", help="default: this rank's GPU, else cpu")
    p.add_argument("--tracking-uri")
    p.add_argument("--run-name")
    p.add_argument("--experiment", default=EXPERIMENT)
    p.add_argument("--parent-run-id", help="nest the MLflow run under this one")
    p.add_argument("--set", dest="overrides", type=train_override, action="append", default=[],
                   metavar="KEY=VALUE", help="train config override, e.g. --set wpg=0")
    args = p.parse_args(argv)
    with distributed.distributed(args.device) as device:
        result = pretrain(args.warehouse, args.stage, config=args.config,
                          feature_set=args.feature_set, vocab=args.vocab, steps=args.steps,
                          out_dir=args.out_dir, resume=args.resume, init_from=args.init_from,
                          tracking_uri=args.tracking_uri, seed=args.seed,
                          checkpoint_every=args.checkpoint_every, device=device,
                          train_overrides=dict(args.overrides), run_name=args.run_name,
                          experiment=args.experiment, parent_run_id=args.parent_run_id,
                          feature_cache=args.feature_cache, reshard=args.reshard)
        if distributed.is_main():
            print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
