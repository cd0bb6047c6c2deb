"""Prefect flow `mvp-evaluate`: retrieval R@1/5/10 both ways (dual encoder and ITM re-ranked), MLM,
and each downstream task head (VQA, visual entailment, referring expressions) of a local
checkpoint or registered model (`models:/mvp-retrieval@champion`, `models:/mvp-ve@champion`),
printed, saved as JSON by the run outputs and as an artifact."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

from flows.defaults import WAREHOUSE
from model.downstream.evaluate import evaluate, results_rows
from model.downstream.retrieval import K_IMAGE, K_TEXT
from model.downstream.tasks import TASKS, flat_metrics
from model.serving.source import is_local, resolve_model
from warehouse.text_table import format_table


@task(name="evaluate-retrieval", cache_policy=NONE)
def retrieval_task(checkpoint: str, warehouse: str, split: str, k_text: int, k_image: int):
    return evaluate(checkpoint, warehouse, split=split, k_text=k_text, k_image=k_image)


@task(name="evaluate-head", task_run_name="evaluate-{kind}", cache_policy=NONE)
def head_task(kind: str, checkpoint: str, warehouse: str, split: str,
              dataset: str | None) -> dict:
    report = TASKS[kind].function("evaluate")(checkpoint, warehouse, split=split, dataset=dataset)
    return flat_metrics(kind, report)


@flow(name="mvp-evaluate", log_prints=True)
def evaluate_flow(model: str, warehouse: str = WAREHOUSE, split: str = "test",
                  task: Literal["all", "retrieval", "vqa", "ve", "refexp"] = "all",
                  dataset: str | None = None, k_text: int = K_TEXT, k_image: int = K_IMAGE,
                  out: str = "runs/evaluate/results.json") -> dict:
    """The evaluation suite on one model; the metrics go to `out` as JSON.

    Args:
        model: checkpoint file or MLflow URI, e.g. models:/mvp-retrieval@champion
        warehouse: warehouse root, a local folder or an object-store URL (s3://bucket/prefix)
        split: the split evaluated on
        task: all (retrieval, and every task head a package holds), or one; a checkpoint file
            of a fine-tuned head (runs/finetune/ve/ve/last.pt) needs its task named
        dataset: evaluate the task heads on this dataset only (none: all)
        k_text: captions re-ranked per image
        k_image: images re-ranked per caption
        out: the JSON file written
    """
    source = resolve_model(model)
    metrics = {}
    if task in ("all", "retrieval"):
        metrics.update(retrieval_task(source["checkpoint"], warehouse, split, k_text, k_image))
    heads = source["heads"] if task == "all" else {}
    if task in TASKS:   # a package names the head's checkpoint; a file is the head itself
        heads = {task: source["checkpoint"] if is_local(model) else source["heads"].get(task)}
    for kind, checkpoint in heads.items():
        if checkpoint is None:
            raise ValueError(f"{model} holds no fine-tuned {kind} head")
        metrics.update(head_task(kind, checkpoint, warehouse, split, dataset))
    rows = results_rows(metrics)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"model": model, "split": split, "metrics": metrics},
                                    indent=1, default=str))
    create_table_artifact(table=[{"metric": m, "value": v} for m, v in rows],
                          key="mvp-evaluate", description=f"{model} on {split}")
    print(f"\n{model} on {split}:\n" + format_table(["metric", "value"], rows)
          + f"\n(written to {out})")
    return metrics
