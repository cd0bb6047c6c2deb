"""Fine-tuning one task head on top of a pre-trained MVP (VQA, visual entailment, referring
expressions): one runner for what every head shares (model config, trainer, resume, MLflow run,
evaluation after training), so a new downstream task only says what is its own (`HeadTask`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from features.feature_sets import list_feature_sets
from model.config import DEFAULT_PRESET, ModelConfig, load_config
from model.mvp import MVP
from model.training import tracking
from model.training.checkpoint import load_checkpoint, load_weights
from model.training.config import load_train_config, schedule_for
from model.training.progress import Progress
from model.training.trainer import Trainer
from warehouse.store import Warehouse
from warehouse.version import code_version

EXPERIMENT = "mvp-finetune"


@dataclass(frozen=True)
class HeadTask:
    """What one downstream task adds to the shared runner.

    data(warehouse, feature_set, cfg, split, dataset, train) -> Dataset with `collate`; `train`
        is the training data when building an evaluation split (its vocabulary, say), else None.
    model(mvp, train) -> the head module; forward(batch, generator) -> {"loss", <score>}.
    evaluate(model, train, data, batch_size) -> (report, baselines, flat metrics), the report
        and baselines as JSON-able dicts.
    params(train) -> extra MLflow params, also in the result;
    artifacts(train) -> {file name: JSON-able object} logged with the run.
    """
    name: str                   # run name, checkpoint folder and MLflow task tag
    score_key: str              # the training-time score forward returns beside "loss"
    data: Callable
    model: Callable
    evaluate: Callable
    params: Callable = lambda train: {}
    artifacts: Callable = lambda train: {}


def model_config(wh: Warehouse, config: str, init_state: dict | None,
                 feature_set: str | None) -> ModelConfig:
    """The init checkpoint's model config, else the preset sized for the feature set."""
    if init_state is not None:
        return ModelConfig(**init_state["model_config"])
    specs = list_feature_sets(wh)
    spec = next((s for s in reversed(specs) if feature_set in (None, s.id)), None)
    if spec is None:
        raise LookupError(f"no feature set {feature_set or ''} in warehouse {wh.root}")
    return load_config(config, feat_dim=spec.dim, feature_set=spec.id)


def load_head(checkpoint: str | Path | dict, build: Callable[[MVP, dict], nn.Module]
              ) -> nn.Module:
    """A fine-tuned head from its checkpoint (on CPU, in eval mode); build(mvp, extra state)
    makes the empty module (the extra state holds e.g. the answer vocabulary)."""
    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    model = build(MVP(ModelConfig(**state["model_config"])),
                  state["model"].get("_extra_state", {}))
    model.load_state_dict(state["model"])
    return model.eval()


def resolve_device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def finetune_head(task: HeadTask, warehouse, init_from, config: str = DEFAULT_PRESET,
                  steps: int | None = None, dataset: str | None = None, out_dir="runs/finetune",
                  tracking_uri: str | None = None, seed: int | None = None,
                  device: str | None = None, batch_size: int | None = None,
                  lr: float | None = None, feature_set: str | None = None,
                  train_split: str = "train", eval_split: str | None = "val",
                  experiment: str = EXPERIMENT, parent_run_id: str | None = None,
                  run_name: str | None = None, resume: bool = False,
                  checkpoint_every: int = 500) -> dict:
    """Fine-tune `task` on `train_split` for `steps` optimizer steps (default: the config's
    total_steps; the lr warms up over min(config warmup, steps/10) and decays to 0 at `steps`)
    from `init_from` (a pre-training checkpoint; None: random init), then evaluate on
    `eval_split`. `resume` continues <out_dir>/<task>/last.pt exactly (weights, optimizer, data
    position, RNG; the same MLflow run), saved every `checkpoint_every` steps. Returns {"steps",
    "checkpoint", "run_id", "final" (last step's log), "eval", "baselines", "n_train", and the
    task's params}."""
    mlflow = tracking.mlflow
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    init_state = None if init_from is None else load_checkpoint(init_from)
    cfg = model_config(wh, config, init_state, feature_set)
    total = load_train_config(config).total_steps if steps is None else steps
    overrides = schedule_for(config, total)
    overrides.update({k: v for k, v in (("seed", seed), ("batch_size", batch_size), ("lr", lr))
                      if v is not None})
    tcfg = load_train_config(config, **overrides)
    fs = feature_set or cfg.feature_set
    run_name = run_name or task.name

    train = task.data(wh, fs, cfg, train_split, dataset, None)
    if len(train) == 0:
        raise LookupError(f"no {task.name} training examples with features in {fs}")
    torch.manual_seed(tcfg.seed)  # model and head init
    mvp = MVP(cfg)
    if init_state is not None:
        load_weights(mvp, init_state)
    model = task.model(mvp, train)
    trainer = Trainer(model, tcfg, device=resolve_device(device))
    ckpt = Path(out_dir) / task.name / "last.pt"
    position = {"epoch": 0, "index": 0, "mlflow_run_id": None}
    if resume:
        if not ckpt.exists():
            raise FileNotFoundError(f"nothing to resume: no checkpoint {ckpt}")
        position.update(trainer.load(ckpt) or {})

    run, new_run = tracking.start_run(experiment, run_name, tracking_uri,
                                      run_id=position["mlflow_run_id"],
                                      parent_run_id=parent_run_id)
    with run:
        position["mlflow_run_id"] = run.info.run_id
        if new_run:
            mlflow.log_params({**{f"model.{k}": v for k, v in cfg.to_dict().items()},
                               **{f"train.{k}": v for k, v in tcfg.to_dict().items()},
                               "config": str(config), "init_from": str(init_from),
                               "dataset": str(dataset), "n_train": len(train),
                               **task.params(train)})
            mlflow.set_tags({"feature_set": fs, "vocab": str(cfg.vocab_version),
                             "task": task.name, "git_commit": code_version()})
        progress = Progress(run_name, total, start=trainer.step, keys=("loss", task.score_key))

        def on_step(step: int, last: dict, group: list) -> None:
            mlflow.log_metrics(last, step=step)
            progress.step(step, last)

        final = trainer.run(train, position, total, ckpt, checkpoint_every, on_step)
        trainer.save(ckpt, data_position=position)
        mlflow.log_artifact(str(ckpt), artifact_path="checkpoints")
        for name, obj in task.artifacts(train).items():
            mlflow.log_dict(obj, name)
        result = {"steps": trainer.step, "checkpoint": str(ckpt), "run_id": run.info.run_id,
                  "final": final, "eval": None, "baselines": None, "n_train": len(train),
                  **task.params(train)}
        if eval_split is not None:
            data = task.data(wh, fs, cfg, eval_split, dataset, train)
            if len(data):
                report, baselines, metrics = task.evaluate(model, train, data, tcfg.batch_size)
                result.update(eval=report, baselines=baselines)
                mlflow.log_metrics({f"{eval_split}_{k}": v for k, v in metrics.items()})
                mlflow.log_text(json.dumps({"eval": report, **(baselines or {})}, indent=1),
                                f"eval_{eval_split}.json")
        return result


def fine_tuned(model_or_checkpoint, load: Callable, kind: type, device: str | None
               ) -> nn.Module:
    """A fine-tuned head given as the module itself or as its checkpoint, on `device`."""
    model = model_or_checkpoint if isinstance(model_or_checkpoint, kind) else load(
        model_or_checkpoint)
    return model.to(resolve_device(device))

