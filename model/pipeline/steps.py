"""The steps of the end-to-end pipeline, without Prefect (flows/pipeline.py orchestrates them):
pre-train, fine-tune for retrieval and each downstream task, evaluate, register; each a cached step
(model/pipeline/cache.py) keyed by its data, config, budget, code and upstream step."""
from __future__ import annotations

from pathlib import Path

from model.config import config_file
from model.downstream.evaluate import evaluate
from model.downstream.retrieval import K_IMAGE, K_TEXT
from model.downstream.tasks import TASKS
from model.pipeline.cache import run_once
from model.serving.pyfunc import log_to_run
from model.training.config import schedule_for
from model.training.pretrain import pretrain
from warehouse.hashing import file_sha256
from warehouse.store import Warehouse
from warehouse.version import code_version


def data_state(warehouse) -> dict:
    """What the data of a step is: the warehouse and its snapshot (a rebuild or new ingest makes
    a new snapshot, so every step downstream of it runs again)."""
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    return {"warehouse": str(wh.root), "snapshot": wh.current().version}


def config_state(config: str) -> dict:
    """A preset is identified by its contents: editing configs/small.yaml retrains."""
    return {"name": str(config), "sha256": file_sha256(config_file(config))}


def stage_step(root, warehouse, stage: str, config: str, steps: int, init: dict | None = None,
               overrides: dict | None = None, name: str | None = None,
               tracking: dict | None = None, model_overrides: dict | None = None) -> dict:
    """One pre-training (or retrieval fine-tuning) stage. `init`: the upstream step's result
    (its checkpoint's weights start this stage). `tracking`: tracking_uri / experiment /
    parent_run_id for MLflow."""
    name = name or stage
    overrides = {**schedule_for(config, steps), **(overrides or {})}
    inputs = {"step": "train", "stage": stage, "config": config_state(config), "steps": steps,
              "overrides": overrides, "init": init and init["folder"],
              # only when set: the steps cached before architecture variants keep their keys
              **({"model_overrides": model_overrides} if model_overrides else {}),
              "data": data_state(warehouse), "code": code_version()}

    def run(folder: Path) -> dict:
        last = folder / stage / "last.pt"
        r = pretrain(warehouse, stage, config=config, steps=steps, out_dir=folder,
                     resume=last.exists(), init_from=None if last.exists() or init is None
                     else init["checkpoint"], train_overrides=overrides,
                     model_overrides=model_overrides, run_name=name,
                     **(tracking or {}))
        model_uri = log_to_run(r, warehouse, (tracking or {}).get("tracking_uri"))
        return {"checkpoint": r["checkpoint"], "run_id": r["run_id"], "steps": r["steps"],
                "final": r["final"], "model_uri": model_uri, "files": [r["checkpoint"]]}

    return run_once(root, name, inputs, run)


def head_step(root, warehouse, task: str, init: dict, config: str, steps: int,
              dataset: str | None = None, train_split: str = "train", eval_split: str = "val",
              name: str | None = None, batch_size: int | None = None,
              tracking: dict | None = None) -> dict:
    """Fine-tune a downstream task's head and model (model/downstream/tasks.py: vqa, ve,
    refexp) from a pre-training step's checkpoint."""
    finetune = TASKS[task].function("finetune")
    name = name or task
    inputs = {"step": task, "config": config_state(config), "steps": steps, "dataset": dataset,
              "splits": [train_split, eval_split], "init": init["folder"], "batch": batch_size,
              "data": data_state(warehouse), "code": code_version()}

    def run(folder: Path) -> dict:
        r = finetune(warehouse, init["checkpoint"], config=config, steps=steps,
                     dataset=dataset, out_dir=folder, train_split=train_split,
                     eval_split=eval_split, batch_size=batch_size, run_name=name,
                     resume=(folder / task / "last.pt").exists(), **(tracking or {}))
        return {"checkpoint": r["checkpoint"], "run_id": r["run_id"], "eval": r["eval"],
                "baselines": r.get("baselines"), "files": [r["checkpoint"]]}

    return run_once(root, name, inputs, run)


def evaluate_step(root, warehouse, trained: dict, split: str = "test", k_text: int = K_TEXT,
                  k_image: int = K_IMAGE) -> dict:
    """Retrieval (dual encoder and ITM re-ranked) and MLM metrics of a training step's model."""
    inputs = {"step": "evaluate", "split": split, "k": [k_text, k_image],
              "model": trained["folder"], "data": data_state(warehouse), "code": code_version()}

    def run(folder: Path) -> dict:
        return {"metrics": evaluate(trained["checkpoint"], warehouse, split=split,
                                    k_text=k_text, k_image=k_image)}

    return run_once(root, f"eval-{Path(trained['folder']).name}-{split}", inputs, run)


def head_evaluate_step(root, warehouse, task: str, trained: dict, split: str = "test",
                       dataset: str | None = None) -> dict:
    """A fine-tuned downstream task's report on a split (and dataset)."""
    evaluate_head = TASKS[task].function("evaluate")
    inputs = {"step": f"evaluate-{task}", "split": split, "dataset": dataset,
              "model": trained["folder"], "data": data_state(warehouse), "code": code_version()}

    def run(folder: Path) -> dict:
        return {"metrics": evaluate_head(trained["checkpoint"], warehouse, split=split,
                                         dataset=dataset)}

    return run_once(root, f"eval-{Path(trained['folder']).name}-{dataset or 'all'}-{split}",
                    inputs, run)
