"""Prefect flow `mvp-predict`: a fine-tuned model's answers on an unlabelled split, written in the
format its official server takes (VQA v2 test-dev / test-std)."""
from __future__ import annotations

from typing import Literal

from prefect import flow, task
from prefect.cache_policies import NONE

from flows.defaults import WAREHOUSE


@task(name="vqa-results-file", retries=0, cache_policy=NONE)
def vqa_results_task(vqa_checkpoint: str, warehouse: str, split: str, out: str,
                     dataset: str) -> dict:
    from model.downstream.vqa.submit import write_results
    return write_results(vqa_checkpoint, warehouse, split, out, dataset)


@flow(name="mvp-predict", log_prints=True)
def predict_flow(task: Literal["vqa"], model: str, warehouse: str = WAREHOUSE,
                 split: str = "test-dev2015", dataset: str = "vqa",
                 out: str = "runs/predict/vqa-results.json") -> dict:
    """Answer every question of an unlabelled split and write the results file to submit.

    Args:
        task: the task whose results file is written
        model: fine-tuned VQA checkpoint file, or an MLflow URI of a package holding one, e.g.
            models:/mvp-vqa@champion
        warehouse: warehouse root, a local folder or an object-store URL (s3://bucket/prefix)
        split: the questions' split as ingested (the file's data_subtype)
        dataset: the dataset the questions were ingested as
        out: the results file written ([{"question_id": int, "answer": str}])
    """
    from model.serving.source import is_local, resolve_model
    checkpoint = model if is_local(model) else resolve_model(model)["heads"].get("vqa")
    if checkpoint is None:
        raise ValueError(f"{model} holds no fine-tuned VQA checkpoint")
    report = vqa_results_task(checkpoint, warehouse, split, out, dataset)
    print(f"{report['questions']} answers written to {report['out']} "
          f"({report['answered_by_prior']} without region features: the most frequent answer)")
    return report
