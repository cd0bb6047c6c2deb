"""Prefect flow `mvp-pipeline`: the whole product on one warehouse, each step a task: data (shapes
+ easy-vqa, concepts, features) -> pretrain (stage1 -> stage2, or joint) -> fine-tune (retrieval,
VQA, visual entailment, referring expressions) -> evaluate (val decides promotion, test is
reported) -> register (challengers; champion if better). A rerun skips what is done (model
steps are cached by their inputs' fingerprint, model/pipeline/cache.py); its MLflow runs nest
under one parent run named after the flow run."""
from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from flows.concepts import concepts_flow
from flows.defaults import WAREHOUSE
from flows.feature_store import features_flow
from flows.ingest import ingest_flow
from model.config import DEFAULT_PRESET
from model.pipeline import report, steps
from warehouse.summary import summary_text


@task(name="train", cache_policy=NONE)
def train_task(**kw) -> dict:
    return steps.stage_step(**kw)


@task(name="finetune", task_run_name="finetune-{task}", cache_policy=NONE)
def head_task(task: str, **kw) -> dict:
    return steps.head_step(task=task, **kw)


@task(name="evaluate", cache_policy=NONE)
def evaluate_task(**kw) -> dict:
    return steps.evaluate_step(**kw)


@task(name="evaluate-head", task_run_name="evaluate-{task}", cache_policy=NONE)
def head_evaluate_task(task: str, **kw) -> dict:
    return steps.head_evaluate_step(task=task, **kw)


@task(name="register", cache_policy=NONE)
def register_task(**kw) -> dict:
    return report.register_and_promote(**kw)


@task(name="pictures", cache_policy=NONE)
def pictures_task(**kw) -> list[str]:
    return report.log_pictures(**kw)


def _log(message: str) -> None:
    get_run_logger().info(message)


@flow(name="mvp-pipeline", log_prints=True)
def pipeline_flow(warehouse: str = WAREHOUSE, n_images: int = 2000,
                  easy_vqa_images: int = 500, backbone: str = "efficientnet-lite0",
                  min_count: int = 20, config: str = DEFAULT_PRESET,
                  schedule: Literal["sequential", "joint"] = "sequential",
                  batch_size: int | None = 32, stage1_steps: int = 200, stage2_steps: int = 120,
                  retrieval_steps: int = 40, vqa_steps: int = 80, ve_steps: int = 80,
                  refexp_steps: int = 80, k_text: int = 16,
                  k_image: int = 8, out_dir: str = "runs/pipeline", register: bool = True,
                  tracking_uri: str | None = None) -> dict:
    """Defaults: the CPU demo (about 10 minutes on 2 cores after the install). On a GPU, raise the steps,
    batch_size=None (the config's) and k_text=128, k_image=64 (the paper's re-ranking).

    Args:
        warehouse: warehouse root, a local folder or an object-store URL (s3://bucket/prefix)
        n_images: shapes scenes generated
        easy_vqa_images: easy-vqa images with features (0: skip easy-vqa)
        backbone: image tower of the region features
        min_count: captions a concept must appear in
        config: model/train preset name or YAML path
        schedule: sequential (stage1 -> stage2, the paper) or joint (one stage, all losses)
        batch_size: training batch (none: the config's)
        stage1_steps: stage-1 steps (joint: stage1 + stage2 steps in one stage)
        stage2_steps: stage-2 steps
        retrieval_steps: retrieval fine-tuning steps
        vqa_steps: VQA fine-tuning steps (0: no VQA)
        ve_steps: visual-entailment fine-tuning steps (0: none)
        refexp_steps: referring-expression fine-tuning steps (0: none)
        k_text: captions re-ranked per image
        k_image: images re-ranked per caption
        out_dir: where checkpoints and cached steps go
        register: register the models in MLflow and promote those that beat the champion
        tracking_uri: MLflow tracking URI (none: $MLFLOW_TRACKING_URI, else mlflow.db in the
            project folder)
    """
    # ---- data ----
    ingest_flow(dataset="shapes", warehouse=warehouse, n_images=n_images, seed=0)
    if easy_vqa_images:
        ingest_flow(dataset="easy-vqa", warehouse=warehouse)
    concepts_flow(warehouse=warehouse, min_count=min_count)
    features_flow(warehouse=warehouse, backbone=backbone, dataset="shapes")
    if easy_vqa_images:
        features_flow(warehouse=warehouse, backbone=backbone, dataset="easy-vqa",
                      max_images=easy_vqa_images)
    print("\n" + summary_text(warehouse))

    # ---- models, all MLflow runs nested under one parent ----
    with report.pipeline_run(tracking_uri, {**locals()}, run_name=flow_run.name) as tracking:
        common = {"root": out_dir, "warehouse": warehouse, "tracking": tracking,
                  "config": config}
        batch = {"overrides": {"batch_size": batch_size} if batch_size else None}
        if schedule == "sequential":
            s1 = train_task(stage="stage1", steps=stage1_steps, **batch, **common)
            pre = train_task(stage="stage2", steps=stage2_steps, init=s1, **batch, **common)
        else:
            pre = train_task(stage="joint", steps=stage1_steps + stage2_steps, **batch, **common)
        ret = train_task(stage="retrieval", steps=retrieval_steps, init=pre, **batch, **common)
        heads = {t: head_task(task=t, init=pre, steps=n, batch_size=batch_size, **common)
                 for t, n in (("vqa", vqa_steps), ("ve", ve_steps), ("refexp", refexp_steps))
                 if n > 0}
        for name, r in (("pre-training", pre), ("retrieval", ret), *heads.items()):
            _log(f"{name}: {'cached, skipped' if r['cached'] else 'trained'} ({r['folder']})")

        ev = {"root": out_dir, "warehouse": warehouse}
        results = {
            split: {
                "zero-shot": evaluate_task(trained=pre, split=split, k_text=k_text,
                                           k_image=k_image, **ev)["metrics"],
                "retrieval": evaluate_task(trained=ret, split=split, k_text=k_text,
                                           k_image=k_image, **ev)["metrics"],
                **({"vqa": {d: head_evaluate_task(task="vqa", trained=heads["vqa"], split=split,
                                                  dataset=d, **ev)["metrics"]
                            for d in report.vqa_datasets(warehouse, heads["vqa"], split)}}
                   if "vqa" in heads else {}),
                **{t: head_evaluate_task(task=t, trained=heads[t], split=split, **ev)["metrics"]
                   for t in heads if t != "vqa"},
            } for split in ("val", "test")}

        registered = {}
        if register:
            registered = register_task(warehouse=warehouse, pre=pre, ret=ret, heads=heads,
                                       val=results["val"], tracking=tracking)
        pictures_task(warehouse=warehouse, trained={"stage2": pre, "retrieval": ret, **heads},
                      tracking=tracking)
        columns, rows = report.results_table(results["test"])
        report.log_results(tracking, results)

    create_table_artifact(table=[dict(zip(columns, r)) for r in rows], key="mvp-results",
                          description="mvp-pipeline: test-split results")
    create_markdown_artifact(report.registry_markdown(registered), key="mvp-registry",
                             description="mvp-pipeline: registered models")
    text = report.format_table(columns, rows)
    print("\n" + text + "\n" + report.registry_text(registered))
    return {"results": results, "registered": registered, "table": text}
