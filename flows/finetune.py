"""Prefect flow `mvp-finetune`: fine-tune a pre-trained checkpoint for one downstream task,
tracked in MLflow: `retrieval` (VSC + hard-negative ITM, model/training/pretrain.py stage
"retrieval"), or a task head of model/downstream/tasks.py: `vqa` (answer classifier), `ve`
(visual entailment), `refexp` (referring expressions)."""
from __future__ import annotations

from typing import Literal

from prefect import flow, task
from prefect.cache_policies import NONE

from flows.defaults import WAREHOUSE
from model.config import DEFAULT_PRESET


@task(name="finetune", task_run_name="finetune-{kind}", cache_policy=NONE)
def finetune_task(kind: str, **params) -> dict:
    if kind == "retrieval":
        from model.training.pretrain import pretrain
        return pretrain(stage="retrieval", **params)
    from model.downstream.tasks import TASKS
    return TASKS[kind].function("finetune")(**params)


def _headline(result: dict) -> str:
    """The evaluation's headline number, when the task evaluated on a split."""
    from model.downstream.tasks import TASKS
    report = result.get("eval") or {}
    metric = next((t.metric for t in TASKS.values() if t.metric in report), None)
    return f", val {metric} {report[metric]:.3f}" if metric else ""


@flow(name="mvp-finetune", log_prints=True)
def finetune_flow(task: Literal["retrieval", "vqa", "ve", "refexp"], init_from: str,
                  warehouse: str = WAREHOUSE, config: str = DEFAULT_PRESET,
                  steps: int | None = None, dataset: str | None = None,
                  eval_split: str = "val", out_dir: str = "runs/finetune",
                  tracking_uri: str | None = None) -> dict:
    """Fine-tune a pre-trained checkpoint; its checkpoint is <out_dir>/<task>/last.pt.

    Args:
        task: what to fine-tune for
        init_from: pre-training checkpoint
        warehouse: warehouse root, a local folder or an object-store URL (s3://bucket/prefix)
        config: preset name or YAML path (model + train)
        steps: stop at this step (none: the config's total_steps)
        dataset: train and evaluate on this dataset only (vqa, ve, refexp; none: all)
        eval_split: the split evaluated after training (vqa, ve, refexp; e.g. SNLI-VE's dev)
        out_dir: where checkpoints go
        tracking_uri: MLflow tracking URI (none: $MLFLOW_TRACKING_URI, else mlflow.db in the
            project folder)
    """
    params = {"warehouse": warehouse, "init_from": init_from, "config": config, "steps": steps,
              "out_dir": f"{out_dir}/{task}", "tracking_uri": tracking_uri}
    if task != "retrieval":
        params.update(dataset=dataset, eval_split=eval_split)
    result = finetune_task(task, **params)
    print(f"{task}: checkpoint {result['checkpoint']}, MLflow run {result['run_id']}"
          + _headline(result))
    return result
