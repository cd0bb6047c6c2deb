"""Pre-training variants side by side at an equal budget of optimizer steps and batch (the paper's
two stages, the authors' joint schedule, the multi-level alignment taken apart), each scored the
same way on a held-out split: zero-shot retrieval, and VQA after fine-tuning."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import mlflow

from model.config import DEFAULT_PRESET, ModelConfig
from model.downstream.evaluate import evaluate_retrieval
from model.downstream.retrieval import K_IMAGE, K_TEXT
from model.pipeline import steps as pipeline
from model.pipeline.cache import run_once
from model.pipeline.report import pipeline_run, vqa_datasets
from model.pipeline.seeds import aggregate, beyond_spread
from model.training.checkpoint import load_checkpoint, load_mvp
from model.training.config import load_train_config, schedule_for
from model.training.data import PretrainData
from model.training.task import without_concepts
from warehouse.version import code_version


@dataclass(frozen=True)
class Stage:
    stage: str                                   # a TrainConfig stage
    share: float                                 # of the budget
    overrides: dict = field(default_factory=dict)  # train config switches
    model: dict = field(default_factory=dict)      # model config switches (an architecture)


@dataclass(frozen=True)
class Variant:
    name: str
    stages: tuple[Stage, ...]


_STAGE1, _STAGE2 = Stage("stage1", 0.5), Stage("stage2", 0.5)
_NO_CONCEPTS = {"concepts": False}
VARIANTS = (
    Variant("mvp-sequential", (_STAGE1, _STAGE2)),                      # the paper
    Variant("mvp-joint", (Stage("joint", 1.0),)),                       # the authors' code
    Variant("no-concepts", (Stage("stage1", 0.5, _NO_CONCEPTS),
                            Stage("stage2", 0.5, _NO_CONCEPTS))),
    Variant("no-wpg", (_STAGE1, Stage("stage2", 0.5, {"wpg": 0}))),
    Variant("no-hard-negatives", (_STAGE1, Stage("stage2", 0.5, {"negatives": "random"}))),
    Variant("albef", (Stage("albef", 1.0, _NO_CONCEPTS),)),   # ITC + ITM + MLM, ALBEF-style
    # SIMLA: keyword prediction (PSL) in both stages, cross-modality reconstruction (XMM) with
    # the cross encoder, beside MVP's losses
    Variant("simla", (Stage("stage1", 0.5, {"psl": 1.0}),
                      Stage("stage2", 0.5, {"psl": 1.0, "xmm": 1.0}))),
    # MAMO's joint masking: regions masked with the text recover their label (explicit target)
    # and a momentum teacher's unmasked state (implicit), ALBEF's momentum 0.995
    Variant("mamo", (_STAGE1, Stage("stage2", 0.5, {"mamo": 1.0, "mamo_momentum": 0.995}))),
    # DiMBERT's attention: text and regions with their own q/k/v in the cross encoder
    Variant("dimbert", tuple(Stage(s, 0.5, model={"disentangled_fusion": True})
                             for s in ("stage1", "stage2"))),
)
VARIANT_NAMES = tuple(v.name for v in VARIANTS)


def variant(name: str) -> Variant:
    for v in VARIANTS:
        if v.name == name:
            return v
    raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANT_NAMES)}")


def stage_steps(v: Variant, budget: int) -> list[int]:
    """Optimizer steps of each stage: its share of `budget`, the last stage taking the rest."""
    steps = [int(budget * s.share) for s in v.stages[:-1]]
    return steps + [budget - sum(steps)]


def step_name(v: Variant, k: int, seed: int | None = None) -> str:
    """Name (cache folder and MLflow run) of stage k: that of the first variant of VARIANTS with
    the same stages up to k, so identical leading stages are one step (no-wpg continues
    mvp-sequential's stage 1, and differs from it only in what it ablates)."""
    owner = next((o for o in VARIANTS if o.stages[:k + 1] == v.stages[:k + 1]), v)
    return f"{owner.name}-{v.stages[k].stage}{_seeded(seed)}"


def _seeded(seed: int | None) -> str:
    return "" if seed is None else f"-seed{seed}"


def stage_overrides(stage: Stage, config: str, steps: int) -> dict:
    """The stage's switches plus an lr schedule that ends with the stage, as if it ran alone."""
    return {**stage.overrides, **schedule_for(config, steps)}


def describe(v: Variant, budget: int) -> str:
    """"stage1 300 -> stage2 300 wpg=0": what a variant trains, for the table."""
    def one(s: Stage, n: int) -> str:
        switches = [f"{k}={str(x).lower()}" for k, x in {**s.model, **s.overrides}.items()]
        return " ".join([s.stage, str(n), *switches])
    return " -> ".join(one(s, n) for s, n in zip(v.stages, stage_steps(v, budget)))


def vqa_chance(warehouse, trained: dict, dataset: str, split: str = "test") -> dict:
    """Accuracy on `split` of the dataset's most common training answer ("majority") and of
    the most common answer per question type ("type_prior"), on the questions scored."""
    from model.downstream.vqa.data import VQAData
    from model.downstream.vqa.finetune import baselines
    state = load_checkpoint(trained["checkpoint"])
    cfg = ModelConfig(**state["model_config"])
    train = VQAData(warehouse, cfg.feature_set, cfg, split="train", dataset=dataset)
    held_out = VQAData(warehouse, cfg.feature_set, cfg, train.answer_vocab, split, dataset)
    return {k: r["vqa_acc"] for k, r in baselines(train, held_out).items()}


class _WithoutConcepts:
    """A split's PretrainData as a concepts=false model was trained on it (model/training/task.py)."""

    def __init__(self, data: PretrainData):
        self.data, self.image_of = data, data.image_of

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        return self.data[i]

    def collate(self, items: list[dict]):
        return without_concepts(self.data.collate(items), self.data.cfg)

    def batch(self, indices):
        return without_concepts(self.data.batch(indices), self.data.cfg)


def evaluate_as_trained(root, warehouse, trained: dict, split: str = "test", k_text: int = K_TEXT,
                        k_image: int = K_IMAGE) -> dict:
    """pipeline.evaluate_step; for a model pre-trained without concepts, its retrieval metrics on
    the split without concepts and tags (a cached step too): zero-shot, it would otherwise meet
    inputs it never saw."""
    state = load_checkpoint(trained["checkpoint"])
    if state["train_config"].get("concepts", True):
        return pipeline.evaluate_step(root, warehouse, trained, split, k_text, k_image)
    inputs = {"step": "evaluate", "concepts": False, "split": split, "k": [k_text, k_image],
              "model": trained["folder"], "data": pipeline.data_state(warehouse),
              "code": code_version()}

    def run(folder: Path) -> dict:
        model, stage = load_mvp(state)
        cfg = model.cfg
        data = PretrainData(warehouse, cfg.feature_set, cfg.vocab_version, cfg, split=split)
        return {"metrics": {"split": split, "stage": stage, "concepts": False,
                            **evaluate_retrieval(model, _WithoutConcepts(data), k_text, k_image)}}

    return run_once(root, f"eval-{Path(trained['folder']).name}-{split}", inputs, run)


# What `compare` runs, by kind, each a cached pipeline step (a rerun redoes nothing done); a
# Prefect flow passes its own `call` to run each as a task.
STEPS: dict[str, Callable[..., dict]] = {
    "train": pipeline.stage_step, "evaluate": evaluate_as_trained,
    "vqa": functools.partial(pipeline.head_step, task="vqa"),
    "evaluate-vqa": functools.partial(pipeline.head_evaluate_step, task="vqa"),
    "vqa-chance": vqa_chance}


def run_step(kind: str, label: str, **kw) -> dict:
    """The plain `call`: run step `kind` here (`label` names it for an orchestrator's logs)."""
    return STEPS[kind](**kw)


def run_variant(v: Variant, root, warehouse, config: str, budget: int, vqa_steps: int,
                tracking: dict | None = None, split: str = "test", k_text: int = K_TEXT,
                k_image: int = K_IMAGE, call: Callable[..., dict] = run_step,
                seed: int | None = None, batch_size: int | None = None) -> dict:
    """Pre-train `v` for `budget` steps, then score it. `seed` (default: the config's) seeds
    pre-training: model init, masks, data order; `batch_size` (default: the config's) is every
    step's batch, pre-training and VQA alike. Returns {"variant", "pretraining", "steps"
    (name -> step result), "retrieval" (evaluate() metrics), "vqa" (dataset -> metrics)}."""
    common = {"root": str(root), "warehouse": str(warehouse)}
    seeded = {} if seed is None else {"seed": seed}
    if batch_size is not None:
        seeded["batch_size"] = batch_size
    done, trained = {}, None
    for k, (stage, n) in enumerate(zip(v.stages, stage_steps(v, budget))):
        name = step_name(v, k, seed)
        trained = call("train", name, stage=stage.stage, config=config, steps=n, init=trained,
                       overrides={**stage_overrides(stage, config, n), **seeded}, name=name,
                       tracking=tracking, model_overrides=stage.model, **common)
        done[name] = trained
    retrieval = call("evaluate", f"{v.name}{_seeded(seed)}-evaluate", trained=trained,
                     split=split, k_text=k_text, k_image=k_image, **common)["metrics"]
    vqa = {}
    if vqa_steps > 0:
        name = f"{v.name}{_seeded(seed)}-vqa"
        # every variant gets the same inputs here (question + tags): fine-tuning teaches their use
        tuned = call("vqa", name, init=trained, config=config, steps=vqa_steps, eval_split=None,
                     name=name, tracking=tracking, batch_size=batch_size, **common)
        done[name] = tuned
        vqa = {d: call("evaluate-vqa", f"{name}-{d}", trained=tuned, split=split, dataset=d,
                       **common)["metrics"] for d in vqa_datasets(warehouse, tuned, split)}
    return {"variant": v.name, "pretraining": describe(v, budget), "steps": done,
            "retrieval": retrieval, "vqa": vqa}


def compare(warehouse, root="runs/compare", config: str = DEFAULT_PRESET, budget: int = 600,
            vqa_steps: int = 200, variants: list[str] | None = None, split: str = "test",
            k_text: int = K_TEXT, k_image: int = K_IMAGE, tracking_uri: str | None = None,
            call: Callable[..., dict] = run_step, run_name: str = "compare",
            seeds: list[int] | None = None, batch_size: int | None = None) -> dict:
    """Every variant (default: all of VARIANTS) at `budget` pre-training steps, scored on
    `split`; the results also go to <root>/results.json and as metrics to the parent run.
    With several `seeds` each variant runs once per seed and its metrics are means (sds beside
    them, seeds.aggregate). Returns {"settings", "variants" (name -> run_variant result, or
    its aggregate over the seeds), "chance", "beyond_spread" (sentences)}."""
    chosen = [variant(n) for n in (variants or VARIANT_NAMES)]
    settings = {"flow": "mvp-compare", "warehouse": str(warehouse), "config": config,
                "budget": budget,
                "batch_size": batch_size or load_train_config(config).batch_size,
                "vqa_steps": vqa_steps, "split": split,
                "variants": ",".join(v.name for v in chosen),
                "seeds": ",".join(map(str, seeds or [])) or "config"}
    with pipeline_run(tracking_uri, settings, experiment="mvp-compare",
                      run_name=run_name) as tracking:
        runs = {v.name: {s: run_variant(v, root, warehouse, config, budget, vqa_steps, tracking,
                                        split, k_text, k_image, call, s, batch_size)
                         for s in (seeds or [None])} for v in chosen}
        results = {name: per[None] if seeds is None else aggregate(per)
                   for name, per in runs.items()}
        first = next(iter(next(iter(runs.values())).values()))
        chance = {"t2i_r1": first["retrieval"]["chance_t2i_r1"],
                  "i2t_r1": first["retrieval"]["chance_i2t_r1"], "vqa": {}}
        if vqa_steps > 0:
            tuned = next(step for name, step in first["steps"].items() if name.endswith("-vqa"))
            chance["vqa"] = {d: call("vqa-chance", f"chance-{d}", warehouse=str(warehouse),
                                     trained=tuned, dataset=d, split=split)
                             for d in first["vqa"]}
        out = {"settings": settings, "parent_run_id": tracking["parent_run_id"],
               "variants": results, "chance": chance,
               "beyond_spread": beyond_spread(results, chosen[0].name,
                                              [k for _, k in TABLE_METRICS])}
        _log_metrics(tracking, out)
    Path(root).mkdir(parents=True, exist_ok=True)
    (Path(root) / "results.json").write_text(json.dumps(out, indent=1, default=str))
    return out


TABLE_METRICS = (("t2i R@1", "t2i_r1"), ("i2t R@1", "i2t_r1"),
                 ("t2i R@1 rerank", "rerank_t2i_r1"), ("i2t R@1 rerank", "rerank_i2t_r1"))


def _log_metrics(tracking: dict, out: dict) -> None:
    client = mlflow.MlflowClient(tracking["tracking_uri"])
    for name, r in out["variants"].items():
        values = {key: r["retrieval"][key] for _, key in TABLE_METRICS}
        values.update({f"vqa_acc.{d}": m["vqa_acc"] for d, m in r["vqa"].items()})
        for key, value in values.items():
            client.log_metric(tracking["parent_run_id"], f"{name}.{key}", float(value))


def results_table(out: dict) -> tuple[list[str], list[tuple]]:
    """One row per variant (R@1 in %, VQA accuracy in % per dataset), then the chance levels."""
    datasets = list(out["chance"]["vqa"])
    columns = (["variant", "pre-training"] + [c for c, _ in TABLE_METRICS]
               + [f"VQA {d}" for d in datasets])

    def pct(x: float | None, sd: float | None = None) -> str:
        if x is None:
            return "-"
        return f"{100 * x:.1f}" if sd is None else f"{100 * x:.1f} ± {100 * sd:.1f}"

    rows = [(name, r["pretraining"],
             *(pct(r["retrieval"].get(k), r.get("retrieval_sd", {}).get(k))
               for _, k in TABLE_METRICS),
             *(pct(r["vqa"][d]["vqa_acc"], r.get("vqa_sd", {}).get(d)) for d in datasets))
            for name, r in out["variants"].items()]
    c = out["chance"]
    rows.append(("chance", "uniform ranking; VQA: majority answer",
                 *(pct(c["t2i_r1"]), pct(c["i2t_r1"])) * 2,
                 *(pct(c["vqa"][d]["majority"]) for d in datasets)))
    if datasets:
        rows.append(("prior", "VQA: top answer per question type", "", "", "", "",
                     *(pct(c["vqa"][d]["type_prior"]) for d in datasets)))
    return columns, rows
