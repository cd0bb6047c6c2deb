"""What the pipeline records and shows: its parent MLflow run, the registered models with their
promotion decisions, pictures, and the results table."""
from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path

import mlflow

from model.downstream.tasks import TASKS
from model.training import tracking as mlt
from warehouse.catalog import connect
from warehouse.store import Warehouse
from warehouse.text_table import format_table
from warehouse.version import code_version

EXPERIMENT = "mvp-pipeline"
# name -> (which trained model, metric on the val split that decides promotion); the downstream
# tasks' packages add their head to the pre-trained model's
REGISTERED = {"mvp-pretrained": ("pre", "rsum"),
              "mvp-retrieval": ("ret", "rerank_rsum"),
              **{t.registered: (t.name, t.metric) for t in TASKS.values()}}


@contextmanager
def pipeline_run(tracking_uri: str | None, params: dict, experiment: str = EXPERIMENT,
                 run_name: str = "pipeline"):
    """A parent run that is NOT the thread's active run: the pipeline's tasks may run in other
    threads, so children name it explicitly (parent_run_id) instead of relying on MLflow's
    thread-local run stack."""
    uri = mlt.tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(uri)
    run = client.create_run(mlt.experiment_id(experiment, uri), run_name=run_name,
                            tags={"git_commit": code_version()})
    for k, v in params.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            client.log_param(run.info.run_id, k, str(v))
    status = "FAILED"
    try:
        yield {"tracking_uri": uri, "experiment": experiment, "parent_run_id": run.info.run_id}
        status = "FINISHED"
    finally:
        client.set_terminated(run.info.run_id, status)


def vqa_datasets(warehouse, trained: dict, split: str | None = None) -> list[str]:
    """Datasets with questions (of `split`) on images that have features in the VQA model's
    feature set (easy-vqa has no val split, for one)."""
    from model.training.checkpoint import load_checkpoint
    feature_set = load_checkpoint(trained["checkpoint"])["model_config"]["feature_set"]
    with connect(warehouse) as con:
        rows = con.execute("SELECT DISTINCT q.dataset FROM questions q SEMI JOIN image_features f "
                           "ON f.image_id = q.image_id AND f.feature_set = ? "
                           "WHERE ? IS NULL OR q.split = ? ORDER BY 1",
                           [feature_set, split, split]).fetchall()
    return [r[0] for r in rows]


def lineage(warehouse, checkpoint: str) -> dict:
    """Tags that say what a registered model was made from."""
    from model.training.checkpoint import load_checkpoint
    cfg = load_checkpoint(checkpoint)["model_config"]
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    snap = wh.current()
    return {"feature_set": cfg["feature_set"], "vocab": cfg["vocab_version"],
            "warehouse": str(wh.root), "warehouse_snapshot": str(snap.version),
            "warehouse_manifest": wh.manifest_path(snap.version),
            "git_commit": code_version()}


def register_and_promote(warehouse, pre: dict, ret: dict, heads: dict, val: dict,
                         tracking: dict) -> dict:
    """Register each model's serving package (logged by its training run; a downstream task's
    package, which adds its head, is logged here into the task's run) as `challenger`, and
    promote it to `champion` only when its val metric beats the champion's. `heads`: the
    fine-tuned downstream steps by task name; a task not run is not registered."""
    from model.serving.registry import metric_tag, promote
    trained = {"pre": pre, "ret": ret, **heads}
    metrics = {"pre": val["zero-shot"], "ret": val["retrieval"],
               **{name: val[name] for name in heads if name != "vqa"}}
    if "vqa" in heads:
        metrics["vqa"] = {"vqa_acc": _mean_vqa(val["vqa"])}
    mlflow.set_tracking_uri(tracking["tracking_uri"])
    client = mlflow.MlflowClient(tracking["tracking_uri"])
    out = {}
    for name, (key, metric) in REGISTERED.items():
        if key not in trained:
            continue
        version = _registered_from(client, name, trained[key]["folder"])
        if version is None:
            version = _register(client, name, key, metric, trained, metrics[key], warehouse)
        # on a rerun this finishes (or repeats) the decision an earlier run recorded
        promoted, reason = promote(name, version, metric, client=client)
        value = float(client.get_model_version(name, version).tags[metric_tag(metric)])
        out[name] = {"version": version, "metric": metric, "value": value,
                     "promoted": promoted, "reason": reason}
    return out


def _register(client, name: str, key: str, metric: str, trained: dict, metrics: dict,
              warehouse) -> str:
    from model.serving.pyfunc import log_pyfunc
    from model.serving.registry import register
    pre = trained["pre"]
    base = pre if key in TASKS else trained[key]  # a task's package serves embeddings too
    if key in TASKS:  # pre-training logged its package; the task's adds its head
        with mlflow.start_run(run_id=trained[key]["run_id"]):
            model_uri = log_pyfunc(pre["checkpoint"], warehouse,
                                   head_checkpoints={key: trained[key]["checkpoint"]}).model_uri
    else:
        model_uri = base["model_uri"]
    return register(model_uri, name, lineage(warehouse, base["checkpoint"]), metric,
                    float(metrics[metric]), client=client,
                    tags={STEP_TAG: trained[key]["folder"]})


STEP_TAG = "pipeline_step"  # the training step folder a version was made from


def _registered_from(client, name: str, folder: str) -> str | None:
    """The version an earlier run of the pipeline registered from this training step."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except mlflow.exceptions.MlflowException:
        return None
    return next((str(mv.version) for mv in versions if mv.tags.get(STEP_TAG) == folder), None)


def _mean_vqa(by_dataset: dict) -> float:
    """One VQA number for promotion: the mean accuracy over the evaluated datasets."""
    values = [m["vqa_acc"] for m in by_dataset.values()]
    return sum(values) / len(values) if values else 0.0


def log_pictures(warehouse, trained: dict, tracking: dict, split: str = "test") -> list[str]:
    """Loss curves of the pipeline's runs, retrieval examples of the retrieval model, a
    grounding picture of the pre-trained model and, when the pipeline fine-tuned referring
    expressions, a referring picture of that model on `split`, logged to the parent run."""
    import torch

    from model.pipeline import pictures as artifacts
    from model.training.checkpoint import load_mvp
    from model.training.data import PretrainData
    client = mlflow.MlflowClient(tracking["tracking_uri"])
    keys = ["loss", "vsc", "itm", "mlm", "wpg"]
    with tempfile.TemporaryDirectory(prefix="mvp-pictures-") as tmp, torch.no_grad():
        tmp = Path(tmp)
        paths = [artifacts.loss_curves(client, {k: r["run_id"] for k, r in trained.items()},
                                       keys, tmp / "loss_curves.png")]
        for key, name in (("retrieval", "retrieval_examples.png"), ("stage2", "grounding.png")):
            model, _ = load_mvp(trained[key]["checkpoint"])
            cfg = model.cfg
            data = PretrainData(warehouse, cfg.feature_set, cfg.vocab_version, cfg, split=split)
            if key == "retrieval":
                paths.append(artifacts.retrieval_examples(model, data, warehouse, tmp / name))
            else:
                paths.append(artifacts.grounding_picture(model, data, _most_phrases(data),
                                                         tmp / name, warehouse))
        if "refexp" in trained:
            paths.append(_referring_picture(warehouse, trained["refexp"], split,
                                            tmp / "referring.png"))
        for p in paths:
            client.log_artifact(tracking["parent_run_id"], str(p), "pictures")
    return [f"pictures/{Path(p).name}" for p in paths]


def _referring_picture(warehouse, trained: dict, split: str, path: Path) -> Path:
    """The first expression of `split` whose gold box a candidate covers: a picture where the
    chosen box can be right."""
    from model.downstream.refexp.data import HIT_IOU, ReferringData
    from model.downstream.refexp.finetune import load_refexp
    from model.pipeline.refexp_picture import referring_picture
    model = load_refexp(trained["checkpoint"])
    data = ReferringData(warehouse, model.cfg.feature_set, model.cfg, split)
    index = next((i for i, t in enumerate(data.targets) if (t >= HIT_IOU).any()), 0)
    return referring_picture(model, data, index, path, warehouse)


def _most_phrases(data) -> int:
    """The first caption with the most concepts (up to 3): a picture with several phrases."""
    counts = [min(3, int(n)) for n in data.concept_offsets[1:] - data.concept_offsets[:-1]]
    return max(range(len(counts)), key=lambda i: (counts[i], -i)) if counts else 0


RESULT_COLUMNS = ["model", "t2i R@1", "i2t R@1", "t2i R@1 rerank", "i2t R@1 rerank", "MLM acc",
                  "MLM acc, other image", "ITM acc pos / random neg"]


def results_table(test: dict) -> tuple[list[str], list[tuple]]:
    """Rows per model on the test split; VQA accuracy per dataset as extra rows."""
    def pct(m: dict, k: str) -> str:
        return f"{100 * m[k]:.1f}" if k in m else "-"

    rows = []
    for name in ("zero-shot", "retrieval"):
        m = test[name]
        rows.append((f"{name} (chance t2i {100 * m.get('chance_t2i_r1', 0):.1f})",
                     pct(m, "t2i_r1"), pct(m, "i2t_r1"), pct(m, "rerank_t2i_r1"),
                     pct(m, "rerank_i2t_r1"),
                     f"{pct(m, 'mlm_accuracy')} (majority {pct(m, 'mlm_majority_baseline')})",
                     pct(m, "mlm_accuracy_shuffled_image"),
                     f"{pct(m, 'itm_acc_positive')} / {pct(m, 'itm_acc_random_negative')}"))
    blank = [""] * (len(RESULT_COLUMNS) - 1)
    for dataset, m in test.get("vqa", {}).items():
        rows.append((f"vqa {dataset}: accuracy {100 * m['vqa_acc']:.1f} on "
                     f"{m['n_questions']} questions", *blank))
    if "ve" in test:
        m = test["ve"]
        per_class = " / ".join("-" if v is None else f"{100 * v:.0f}"
                               for v in m["by_label"].values())
        rows.append((f"ve: accuracy {100 * m['ve_acc']:.1f} (chance {100 * m['chance']:.1f}, "
                     f"best constant {100 * m['best_constant']:.1f}; per class "
                     f"{'/'.join(m['by_label'])} {per_class}) on {m['n_hypotheses']} hypotheses",
                     *blank))
    if "refexp" in test:
        m = test["refexp"]
        rows.append((f"refexp: accuracy at IoU >= 0.5 {100 * m['refexp_acc']:.1f} (chance "
                     f"{100 * m['chance']:.1f}, largest region {100 * m['largest_region_acc']:.1f})"
                     f" on {m['n_expressions']} expressions", *blank))
    return RESULT_COLUMNS, rows


def log_results(tracking: dict, results: dict) -> None:
    client = mlflow.MlflowClient(tracking["tracking_uri"])
    for split, by_model in results.items():
        for model, m in by_model.items():
            flat = ({f"{d}.vqa_acc": v["vqa_acc"] for d, v in m.items()} if model == "vqa"
                    else {k: v for k, v in m.items() if isinstance(v, float)})
            for k, v in flat.items():
                client.log_metric(tracking["parent_run_id"], f"{split}.{model}.{k}", v)


def registry_text(registered: dict) -> str:
    if not registered:
        return "no models registered"
    return "\n".join(f"{name} v{r['version']}: {r['metric']} {r['value']:.4f} -> "
                     f"{'champion' if r['promoted'] else 'challenger'} ({r['reason']})"
                     for name, r in registered.items())


def registry_markdown(registered: dict) -> str:
    rows = [f"| {n} | {r['version']} | {r['metric']} = {r['value']:.4f} | "
            f"{'champion' if r['promoted'] else 'challenger'} | {r['reason']} |"
            for n, r in registered.items()]
    return ("## Registered models\n\n| model | version | val metric | alias | why |\n"
            "|---|---:|---|---|---|\n" + "\n".join(rows)) if rows else "no models registered"


__all__ = ["pipeline_run", "register_and_promote", "log_pictures", "results_table",
           "log_results", "registry_text", "registry_markdown", "format_table", "vqa_datasets"]
