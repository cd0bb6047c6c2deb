"""Prefect flow `mvp-finetune`: fine-tune a pre-trained checkpoint for one downstream task,
tracked in MLflow: `retrieval` (VSC + hard-negative ITM, model/training/pretrain.py stage "retrieval") or
`vqa` (answer classifier, model/downstream/vqa/finetune.py)."""
from __future__ import annotations

from typing import Literal

from prefect import flow, task
from prefect.cache_policies import NONE

from flows.defaults import WAREHOUSE
from model.config import DEFAULT_PRESET


@task(name="finetune", cache_policy=NONE)
def finetune_task(kind: str, **params) -> dict:
    if kind == "vqa":
        from model.downstream.vqa.finetune import finetune_vqa
        return finetune_vqa(**params)
    from model.training.pretrain import pretrain
    return pretrain(stage="retrieval", **params)


@flow(name="mvp-finetune", log_prints=True)
def finetune_flow(task: Literal["retrieval", "vqa"], init_from: str, warehouse: str = WAREHOUSE,
                  config: str = DEFAULT_PRESET, steps: int | None = None,
                  out_dir: str = "runs/finetune", tracking_uri: str | None = None) -> dict:
    """Fine-tune a pre-trained checkpoint; its checkpoint is <out_dir>/<task>/last.pt.

    Args:
        task: what to fine-tune for
        init_from: pre-training checkpoint
        warehouse: warehouse root folder
        config: preset name or YAML path (model + train)
        steps: stop at this step (none: the config's total_steps)
        out_dir: where checkpoints go
        tracking_uri: MLflow tracking URI (none: $MLFLOW_TRACKING_URI, else mlflow.db in the
            project folder)
    """
    result = finetune_task(task, warehouse=warehouse, init_from=init_from, config=config,
                           steps=steps, out_dir=f"{out_dir}/{task}", tracking_uri=tracking_uri)
    print(f"{task}: checkpoint {result['checkpoint']}, MLflow run {result['run_id']}"
          + (f", val accuracy {result['eval']['vqa_acc']:.3f}" if "eval" in result else ""))
    return result
