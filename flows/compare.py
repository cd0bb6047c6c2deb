"""Prefect flow `mvp-compare`: pre-training variants (model/pipeline/compare.py) side by side at an
equal budget, each scored by zero-shot retrieval and VQA on the test split. Each step of each
variant is a task and a cached pipeline step, so a rerun skips finished variants; the results
table is printed, kept as the artifact `mvp-compare` and written to <out_dir>/results.json.
    mvp compare --warehouse runs/demo/warehouse --budget 600 --vqa-steps 200"""
from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from flows.defaults import WAREHOUSE
from model.config import DEFAULT_PRESET
from model.downstream.retrieval import K_IMAGE, K_TEXT
from model.pipeline import compare as cmp
from warehouse.text_table import format_table

TASKS = {kind: task(step, name=kind, cache_policy=NONE) for kind, step in cmp.STEPS.items()}


def run_task(kind: str, label: str, **kw) -> dict:
    return TASKS[kind].with_options(task_run_name=label)(**kw)


@flow(name="mvp-compare", log_prints=True)
def compare_flow(warehouse: str = WAREHOUSE, config: str = DEFAULT_PRESET,
                 budget: int = 600, vqa_steps: int = 200, variants: list[str] | None = None,
                 split: str | None = "test", k_text: int = K_TEXT, k_image: int = K_IMAGE,
                 out_dir: str = "runs/compare", tracking_uri: str | None = None,
                 seeds: list[int] | None = None, batch_size: int | None = None) -> dict:
    """Pre-training variants side by side, each scored on `split`.

    Args:
        warehouse: warehouse root, a local folder or an object-store URL (s3://bucket/prefix)
        config: preset name or YAML path (model + train)
        budget: pre-training optimizer steps of every variant (two stages: half each)
        vqa_steps: VQA fine-tuning steps per variant (0: retrieval only)
        variants: the variants to run (none: every one of model/pipeline/compare.py VARIANTS)
        split: the split scored on
        k_text: captions re-ranked per image
        k_image: images re-ranked per caption
        out_dir: where checkpoints and results.json go
        tracking_uri: MLflow tracking URI (none: $MLFLOW_TRACKING_URI, else mlflow.db in the
            project folder)
        seeds: pre-training seeds, each variant run once per seed; the table then gives
            mean ± sd (none: the config's seed, once)
        batch_size: every step's batch, pre-training and VQA (none: the config's; the demo
            trains at 32)
    """
    out = cmp.compare(warehouse, root=out_dir, config=config, budget=budget,
                      vqa_steps=vqa_steps, variants=variants, split=split, k_text=k_text,
                      k_image=k_image, tracking_uri=tracking_uri, call=run_task,
                      run_name=flow_run.name, seeds=seeds, batch_size=batch_size)
    columns, rows = cmp.results_table(out)
    create_table_artifact(table=[dict(zip(columns, r)) for r in rows], key="mvp-compare",
                          description=f"mvp-compare: {split} split, {budget} pre-training steps "
                                      f"of batch {out['settings']['batch_size']}, "
                                      f"{vqa_steps} VQA steps ({config})")
    text = format_table(columns, rows)
    if seeds and len(seeds) > 1:
        spread = out["beyond_spread"]
        text += "\n" + ("\n".join(spread) if spread else
                         f"no variant differs from {rows[0][0]} by more than the seed spread")
    print("\n" + text)
    return {**out, "table": text}
