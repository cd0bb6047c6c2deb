"""Prefect flow `mvp-evaluate`: retrieval R@1/5/10 both ways (dual encoder and ITM re-ranked), MLM
and per-dataset VQA accuracy of a local checkpoint or registered model
(`models:/mvp-retrieval@champion`), printed, saved as JSON by the run outputs and as an artifact."""
from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

from flows.defaults import WAREHOUSE
from model.downstream.evaluate import evaluate, results_rows
from model.downstream.retrieval import K_IMAGE, K_TEXT
from model.serving.source import resolve_model
from warehouse.text_table import format_table


@task(name="evaluate-retrieval", cache_policy=NONE)
def retrieval_task(checkpoint: str, warehouse: str, split: str, k_text: int, k_image: int):
    return evaluate(checkpoint, warehouse, split=split, k_text=k_text, k_image=k_image)


@task(name="evaluate-vqa", cache_policy=NONE)
def vqa_task(checkpoint: str, warehouse: str, split: str) -> dict:
    from model.downstream.vqa.finetune import evaluate_vqa
    return {"vqa_acc": evaluate_vqa(checkpoint, warehouse, split=split)["vqa_acc"]}


@flow(name="mvp-evaluate", log_prints=True)
def evaluate_flow(model: str, warehouse: str = WAREHOUSE, split: str = "test",
                  k_text: int = K_TEXT, k_image: int = K_IMAGE,
                  out: str = "runs/evaluate/results.json") -> dict:
    """The evaluation suite on one model; the metrics go to `out` as JSON.

    Args:
        model: checkpoint file or MLflow URI, e.g. models:/mvp-retrieval@champion
        warehouse: warehouse root folder
        split: the split evaluated on
        k_text: captions re-ranked per image
        k_image: images re-ranked per caption
        out: the JSON file written
    """
    source = resolve_model(model)
    metrics = retrieval_task(source["checkpoint"], warehouse, split, k_text, k_image)
    if source["vqa_checkpoint"]:
        metrics.update(vqa_task(source["vqa_checkpoint"], warehouse, split))
    rows = results_rows(metrics)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"model": model, "split": split, "metrics": metrics},
                                    indent=1, default=str))
    create_table_artifact(table=[{"metric": m, "value": v} for m, v in rows],
                          key="mvp-evaluate", description=f"{model} on {split}")
    print(f"\n{model} on {split}:\n" + format_table(["metric", "value"], rows)
          + f"\n(written to {out})")
    return metrics
