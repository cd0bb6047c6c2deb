"""The comparison of pre-training variants on the tiny store: each variant trains exactly its
losses at the same budget, shared leading stages train once, every run nests under one parent,
the table has a row per variant with the right chance level, and a rerun (through the Prefect
flow) trains nothing."""
import mlflow
import pytest

from model.pipeline.compare import VARIANT_NAMES, compare, results_table, stage_steps, variant
from model.training.checkpoint import load_checkpoint
from model.training.data import PretrainData

pytestmark = pytest.mark.slow  # long training or subprocesses: not in make test-fast

BUDGET, VQA_STEPS = 4, 2
# MLflow run name -> train.losses of every pre-training step
LOSSES = {"mvp-sequential-stage1": "vsc,mcr", "mvp-sequential-stage2": "vsc,mcr,itm,mlm,wpg",
          "mvp-joint-joint": "vsc,mcr,itm,mlm,wpg",
          "no-concepts-stage1": "vsc", "no-concepts-stage2": "vsc,itm,mlm",
          "no-wpg-stage2": "vsc,mcr,itm,mlm",
          "no-hard-negatives-stage2": "vsc,mcr,itm,mlm,wpg",
          "albef-albef": "vsc,itm,mlm",
          "simla-stage1": "vsc,mcr,psl", "simla-stage2": "vsc,mcr,itm,mlm,wpg,psl,xmm",
          "dimbert-stage1": "vsc,mcr", "dimbert-stage2": "vsc,mcr,itm,mlm,wpg",
          "mamo-stage2": "vsc,mcr,itm,mlm,wpg,mamo"}


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_feature_store):
    tmp = tmp_path_factory.mktemp("compare")
    wh, fs, vocab = tiny_feature_store(tmp)
    uri = f"sqlite:///{tmp}/mlflow.db"
    kw = {"root": tmp / "runs", "config": "tiny", "budget": BUDGET, "vqa_steps": VQA_STEPS,
          "k_text": 4, "k_image": 2, "tracking_uri": uri,
          "split": None}   # every image: the tiny store's test split has one image
    first = compare(wh, **kw)
    return {"wh": wh, "fs": fs["feature_set"], "vocab": vocab["vocab"], "uri": uri, "kw": kw,
            "first": first}


def _children(uri: str, parent: str) -> dict:
    client = mlflow.MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, f"tags.mlflow.parentRunId = '{parent}'")
    vqa = [r for r in runs if r.data.tags.get("task") == "vqa"]
    return {r.info.run_name: r for r in runs if r not in vqa}, vqa


def test_equal_budget_split_over_stages():
    assert stage_steps(variant("mvp-sequential"), 601) == [300, 301]
    assert stage_steps(variant("mvp-joint"), 601) == [601]
    with pytest.raises(ValueError, match="no-such"):
        variant("no-such")


def test_every_variant_trains_its_losses_under_one_parent(compared):
    out = compared["first"]
    assert list(out["variants"]) == list(VARIANT_NAMES)
    trained, vqa = _children(compared["uri"], out["parent_run_id"])
    assert {n: r.data.params["train.losses"] for n, r in trained.items()} == LOSSES
    # each stage's lr schedule ends with the stage: half the budget each in two stages
    steps = {n: int(r.data.params["train.total_steps"]) for n, r in trained.items()}
    assert steps == {n: BUDGET if n in ("mvp-joint-joint", "albef-albef") else BUDGET // 2
                     for n in LOSSES}
    assert trained["no-hard-negatives-stage2"].data.params["train.negatives"] == "random"
    assert trained["mvp-sequential-stage2"].data.params["train.negatives"] == "hard"
    assert trained["albef-albef"].data.params["train.concepts"] == "False"
    assert trained["albef-albef"].data.params["train.negatives"] == "sampled"
    assert trained["simla-stage2"].data.params["train.xmm"] == "1.0"
    assert "psl" in trained["simla-stage1"].data.metrics
    dimbert = load_checkpoint(out["variants"]["dimbert"]["steps"]["dimbert-stage2"]["checkpoint"])
    assert dimbert["model_config"]["disentangled_fusion"] is True
    assert any(".qkv_second." in k for k in dimbert["model"])
    # no-wpg, no-hard-negatives and mamo continue mvp-sequential's stage 1, trained once
    stage1 = out["variants"]["mvp-sequential"]["steps"]["mvp-sequential-stage1"]["folder"]
    for name in ("no-wpg", "no-hard-negatives", "mamo"):
        assert out["variants"][name]["steps"]["mvp-sequential-stage1"]["folder"] == stage1
        second = trained[f"{name}-stage2"].data.params["init_from"]
        assert second == out["variants"]["mvp-sequential"]["steps"][
            "mvp-sequential-stage1"]["checkpoint"]
    # one VQA fine-tuning per variant, from that variant's pre-trained checkpoint
    finals = {list(r["steps"].values())[-2]["checkpoint"] for r in out["variants"].values()}
    assert sorted(r.data.params["init_from"] for r in vqa) == sorted(finals)
    assert len(finals) == len(VARIANT_NAMES)


def test_table_has_a_row_per_variant_and_the_chance_level(compared):
    out = compared["first"]
    columns, rows = results_table(out)
    assert columns[:6] == ["variant", "pre-training", "t2i R@1", "i2t R@1", "t2i R@1 rerank",
                           "i2t R@1 rerank"]
    assert columns[6:] == ["VQA shapes"]  # the only dataset with questions in the tiny store
    assert [r[0] for r in rows] == [*VARIANT_NAMES, "chance", "prior"]
    assert rows[3][1] == "stage1 2 -> stage2 2 wpg=0"
    scored = PretrainData(compared["wh"], compared["fs"], compared["vocab"], _cfg(out),
                          split=None)
    n_images = len(scored.regions.image_ids)
    assert n_images == 12 and rows[-2][2] == "8.3"   # chance t2i R@1: one gold image in 12
    for name, row in zip(VARIANT_NAMES, rows):
        r = out["variants"][name]
        assert r["retrieval"]["n_images"] == n_images
        assert row[2] == f"{100 * r['retrieval']['t2i_r1']:.1f}"
        assert row[6] == f"{100 * r['vqa']['shapes']['vqa_acc']:.1f}"
    # models trained without concepts are scored without them, the others with
    concepts = {n: r["retrieval"].get("concepts", True) for n, r in out["variants"].items()}
    assert [n for n, c in concepts.items() if not c] == ["no-concepts", "albef"]


def _cfg(out):
    from model.config import ModelConfig
    from model.training.checkpoint import load_checkpoint
    step = out["variants"]["mvp-joint"]["steps"]["mvp-joint-joint"]
    return ModelConfig(**load_checkpoint(step["checkpoint"])["model_config"])


def test_rerun_of_the_flow_trains_nothing(compared):
    from flows.compare import compare_flow
    kw = {k: v for k, v in compared["kw"].items() if k != "root"}
    kw["out_dir"] = str(compared["kw"]["root"])
    again = compare_flow(warehouse=str(compared["wh"]), **kw)
    assert again["table"].splitlines()[0].startswith("variant")
    for r in again["variants"].values():
        assert all(step["cached"] for step in r["steps"].values())
    trained, vqa = _children(compared["uri"], again["parent_run_id"])
    assert trained == {} and vqa == []
    assert results_table(again) == results_table(compared["first"])


def test_seeds_give_means_and_spreads(compared):
    kw = {**compared["kw"], "root": compared["kw"]["root"].parent / "seeded"}
    out = compare(compared["wh"], **kw, variants=["mvp-joint", "albef"], seeds=[0, 1])
    joint = out["variants"]["mvp-joint"]
    assert set(joint["seeds"]) == {0, 1}
    steps = [list(joint["seeds"][s]["steps"]) for s in (0, 1)]
    assert steps == [["mvp-joint-joint-seed0", "mvp-joint-seed0-vqa"],
                     ["mvp-joint-joint-seed1", "mvp-joint-seed1-vqa"]]
    per_seed = [joint["seeds"][s]["retrieval"]["t2i_r1"] for s in (0, 1)]
    assert joint["retrieval"]["t2i_r1"] == pytest.approx(sum(per_seed) / 2)
    finals = [joint["seeds"][s]["steps"][f"mvp-joint-joint-seed{s}"]["final"]["loss"]
              for s in (0, 1)]
    assert finals[0] != finals[1]                     # the seeds really trained differently
    columns, rows = results_table(out)
    assert all("±" in cell for cell in rows[0][2:])   # every number of a variant: mean ± sd
    assert isinstance(out["beyond_spread"], list)
