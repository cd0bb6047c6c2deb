"""The fine-tuned downstream tasks, one place: where each one's code lives and what it is called,
so the flows, the pipeline, the registry and serving reach every task the same way and import its
code only when they use it."""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class DownstreamTask:
    name: str       # vqa | ve | refexp: the CLI's task, the checkpoint folder, the MLflow tag
    title: str      # what people call it
    module: str     # defines the functions named below and serve(model, inputs, boxes)
    column: str     # the serving request column it answers
    loader: str     # load(checkpoint) -> the fine-tuned module
    finetune: str   # finetune(warehouse, init_from, **kw) -> model/downstream/head_finetune.py's
    evaluate: str   # evaluate(checkpoint_or_model, warehouse, split, dataset=None) -> report
    metric: str     # the report's headline number (registry promotion compares it)
    registered: str  # the MLflow registered model name

    def function(self, which: str):
        """One of this task's functions by its role ("loader", "finetune", "evaluate", or
        "serve"), importing the task's module."""
        name = getattr(self, which) if which != "serve" else "serve"
        return getattr(importlib.import_module(self.module), name)


TASKS = {t.name: t for t in (
    DownstreamTask("vqa", "VQA", "model.downstream.vqa.finetune", "question", "load_vqa",
                   "finetune_vqa", "evaluate_vqa", "vqa_acc", "mvp-vqa"),
    DownstreamTask("ve", "visual entailment", "model.downstream.entailment.finetune",
                   "hypothesis", "load_ve", "finetune_ve", "evaluate_ve", "ve_acc", "mvp-ve"),
    DownstreamTask("refexp", "referring expressions", "model.downstream.refexp.finetune",
                   "expression", "load_refexp", "finetune_refexp", "evaluate_refexp",
                   "refexp_acc", "mvp-refexp"),
)}


def flat_metrics(task: str, report: dict) -> dict:
    """A task's report as flat named numbers for a table or MLflow: its numbers, and one level of
    per-class numbers, each named after the task ("ve_acc", "ve_chance", "ve_by_label_neutral")."""
    def name(key: str) -> str:
        return key if key.startswith(task) else f"{task}_{key}"

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    out = {}
    for key, value in report.items():
        if number(value):
            out[name(key)] = value
        elif isinstance(value, dict):
            out.update({f"{name(key)}_{sub}": v for sub, v in value.items() if number(v)})
    return out
