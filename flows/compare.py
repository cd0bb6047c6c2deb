"""Prefect flow `mvp-compare`: pre-training variants side by side at an equal budget (the paper's
two stages vs joint, without concepts / WPG / hard negatives, ALBEF-style), each scored by
zero-shot retrieval and VQA on the test split; see model/pipeline/compare.py for what each variant is.

    mvp compare --warehouse runs/demo/warehouse --budget 600 --vqa-steps 200
    prefect deployment run 'mvp-compare/ablations'

Every step of every variant is a task (named after the variant and stage) and a cached pipeline
step, so a rerun skips finished variants. The results table is printed, kept as the table
artifact `mvp-compare` and written to <out_dir>/results.json.
"""
from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from model.pipeline import compare as cmp
from warehouse.text_table import format_table

TASKS = {kind: task(step, name=kind, cache_policy=NONE) for kind, step in cmp.STEPS.items()}


def run_task(kind: str, label: str, **kw) -> dict:
    return TASKS[kind].with_options(task_run_name=label)(**kw)


@flow(name="mvp-compare", log_prints=True)
def compare_flow(warehouse: str = "runs/demo/warehouse", config: str = "small",
                 budget: int = 600, vqa_steps: int = 200, variants: list[str] | None = None,
                 split: str | None = "test", k_text: int = 128, k_image: int = 64,
                 out_dir: str = "runs/compare", tracking_uri: str | None = None) -> dict:
    out = cmp.compare(warehouse, root=out_dir, config=config, budget=budget,
                      vqa_steps=vqa_steps, variants=variants, split=split, k_text=k_text,
                      k_image=k_image, tracking_uri=tracking_uri, call=run_task,
                      run_name=flow_run.name)
    columns, rows = cmp.results_table(out)
    create_table_artifact(table=[dict(zip(columns, r)) for r in rows], key="mvp-compare",
                          description=f"mvp-compare: {split} split, {budget} pre-training steps "
                                      f"of batch {out['settings']['batch_size']}, "
                                      f"{vqa_steps} VQA steps ({config})")
    text = format_table(columns, rows)
    print("\n" + text)
    return {**out, "table": text}
