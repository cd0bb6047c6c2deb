"""One pre-training stage as a job: warehouse data -> Trainer -> checkpoints, tracked in MLflow.

    pretrain("runs/demo/warehouse", "stage1", config="small")          # runs/pretrain/stage1
    pretrain("runs/demo/warehouse", "stage2", config="small",
             init_from="runs/pretrain/stage1/last.pt")                   # weights only
    pretrain(..., "stage1", resume=True)       # continue <out_dir>/stage1/last.pt exactly

`steps` is where the run STOPS (global optimizer step); the lr schedule always follows the
config's train.total_steps, so a run stopped at step k and resumed ends with the same losses as
one that never stopped. The data order is DeterministicSampler's (seed, epoch) permutation; the
checkpoint's data position (epoch, samples done in it) says where to pick it up. The MLflow run
id travels in the data position too, so a resumed run appends to the same MLflow run.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from features.feature_sets import list_feature_sets
from features.vocabulary import latest_vocab
from model.config import load_config
from model.data import DeterministicSampler, PretrainData
from model.mvp import MVP
from model.task import PretrainTask
from model.train import Trainer, load_weights
from model.train_config import load_train_config
from warehouse.catalog import connect
from warehouse.store import Warehouse
from warehouse.version import code_version

EXPERIMENT = "mvp-pretrain"


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else a sqlite store in the project folder (the cwd)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _pick_feature_set(wh: Warehouse, feature_set: str | None):
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


def _n_concepts(wh: Warehouse, vocab: str) -> int:
    con = connect(wh)
    try:
        n = con.execute("SELECT max(id) + 1 FROM concepts WHERE vocab = ?", [vocab]).fetchone()[0]
    finally:
        con.close()
    if not n:
        raise LookupError(f"no concept vocabulary {vocab!r} in warehouse {wh.root}")
    return int(n)


def _artifact_root(uri: str) -> str | None:
    """Artifacts of a sqlite store go next to its database (MLflow's default is ./mlruns of
    whatever the cwd happens to be)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


def _start_run(mlflow, uri: str, stage: str, run_id: str | None):
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        mlflow.create_experiment(EXPERIMENT, artifact_location=_artifact_root(uri))
    mlflow.set_experiment(EXPERIMENT)
    nested = mlflow.active_run() is not None  # e.g. inside a pipeline's parent run
    if run_id is not None:
        try:
            return mlflow.start_run(run_id=run_id, nested=nested), False
        except mlflow.exceptions.MlflowException:
            pass  # the checkpoint was made against another tracking store: start a new run
    return mlflow.start_run(run_name=stage, nested=nested), True


def pretrain(warehouse, stage: str, config: str = "small", feature_set: str | None = None,
             vocab: str | None = None, steps: int | None = None, out_dir="runs/pretrain",
             resume: bool = False, init_from=None, tracking_uri: str | None = None,
             seed: int | None = None, checkpoint_every: int = 500,
             device: str | None = None) -> dict:
    """Train `stage` up to global step `steps` (default: the config's total_steps). `seed`
    (default: the config's) seeds the model init, the task's masks and the data order."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    spec = _pick_feature_set(wh, feature_set)
    vocab = vocab or latest_vocab(wh)
    if vocab is None:
        raise LookupError(f"no concept vocabulary in warehouse {wh.root}: run `mvp concepts`")
    cfg = load_config(config, feat_dim=spec.dim, n_concepts=_n_concepts(wh, vocab),
                      feature_set=spec.id, vocab_version=vocab)
    overrides = {"stage": stage} if seed is None else {"stage": stage, "seed": seed}
    tcfg = load_train_config(config, **overrides)
    stop = tcfg.total_steps if steps is None else steps
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")

    ckpt = Path(out_dir) / stage / "last.pt"
    if stage == "stage2" and init_from is None and not resume:
        init_from = Path(out_dir) / "stage1" / "last.pt"  # the usual two-stage layout
        if not init_from.exists():
            raise FileNotFoundError(f"stage2 starts from a stage-1 checkpoint: pass init_from "
                                    f"(none at {init_from})")

    data = PretrainData(wh, spec.id, vocab, cfg, split="train")
    if len(data) == 0:
        raise LookupError(f"no training captions with features in {spec.id}")
    torch.manual_seed(tcfg.seed)  # model init
    trainer = Trainer(PretrainTask(MVP(cfg), tcfg), tcfg, device=device)
    position = {"epoch": 0, "index": 0, "mlflow_run_id": None}
    if resume:
        if not ckpt.exists():
            raise FileNotFoundError(f"nothing to resume: no checkpoint {ckpt}")
        position.update(trainer.load(ckpt) or {})
    elif init_from is not None:
        load_weights(trainer.task, init_from)

    uri = tracking_uri or default_tracking_uri()
    run, new_run = _start_run(mlflow, uri, stage, position["mlflow_run_id"])
    with run:
        position["mlflow_run_id"] = run.info.run_id
        if new_run:
            mlflow.log_params({**{f"model.{k}": v for k, v in cfg.to_dict().items()},
                               **{f"train.{k}": v for k, v in tcfg.to_dict().items()},
                               "config": str(config), "init_from": str(init_from),
                               "n_train_captions": len(data)})
            mlflow.set_tags({"feature_set": spec.id, "vocab": vocab, "stage": stage,
                             "git_commit": code_version()})
            mlflow.log_dict({"model": cfg.to_dict(), "train": tcfg.to_dict()}, "config.yaml")
        final = _loop(trainer, data, position, stop, ckpt, checkpoint_every, mlflow)
        trainer.save(ckpt, data_position=position)
        mlflow.log_artifact(str(ckpt), artifact_path="checkpoints")
        return {"stage": stage, "steps": trainer.step, "checkpoint": str(ckpt),
                "run_id": run.info.run_id, "final": final}


def _loop(trainer: Trainer, data: PretrainData, position: dict, stop: int, ckpt: Path,
          checkpoint_every: int, mlflow) -> dict:
    """Optimizer steps until `stop`, epoch after epoch; `position` is kept current (it is what
    a checkpoint records). Returns the last step's log."""
    tcfg, last = trainer.tcfg, {}
    while trainer.step < stop:
        sampler = DeterministicSampler(len(data), tcfg.seed, position["epoch"],
                                       start=position["index"])
        loader = iter(DataLoader(data, batch_sampler=sampler.batches(tcfg.batch_size),
                                 collate_fn=data.collate, num_workers=0))
        while trainer.step < stop:
            t0 = time.perf_counter()
            # a step's micro-batches never span two epochs: the position stays one (epoch, index)
            group = [b for b in (next(loader, None) for _ in range(tcfg.grad_accum))
                     if b is not None]
            if not group:
                break
            wait = time.perf_counter() - t0
            last = trainer.train_step(group)
            n = sum(len(b) for b in group)
            position["index"] += n
            last.update(samples_per_s=n / (time.perf_counter() - t0), data_wait_s=wait)
            mlflow.log_metrics(last, step=trainer.step)
            if checkpoint_every and trainer.step % checkpoint_every == 0:
                trainer.save(ckpt, data_position=position)
            if len(group) < tcfg.grad_accum:
                break  # the epoch ran out mid-step
        if position["index"] >= len(data):
            position["epoch"], position["index"] = position["epoch"] + 1, 0
    return last
