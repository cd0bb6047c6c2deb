"""The pre-training job end to end on a tiny warehouse: stage1 then stage2 from its checkpoint,
what MLflow records, and a stopped-and-resumed run logging the same losses as one that never
stopped."""
import mlflow
import pytest
import torch

from model.training.checkpoint import load_checkpoint
from model.training.pretrain import pretrain


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_feature_store):
    tmp = tmp_path_factory.mktemp("pretrain")
    wh, fs, vocab = tiny_feature_store(tmp)
    return wh, fs["feature_set"], vocab["vocab"], tmp


def _history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key),
                                              key=lambda m: m.step)]


@pytest.mark.slow
def test_stage1_then_stage2_are_tracked(built, tmp_path, monkeypatch):
    wh, fs, vocab, _ = built
    # MLflow's system-metrics monitor logs once per interval and a 4-step run lasts about a
    # second; start_run stores the interval in this environment variable, restored afterwards
    monkeypatch.setattr("model.training.tracking.SYSTEM_METRICS_INTERVAL_S", 0.05)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.05")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "runs"
    s1 = pretrain(wh, "stage1", config="tiny", steps=4, out_dir=out, tracking_uri=uri)
    assert s1["steps"] == 4 and s1["checkpoint"] == str(out / "stage1" / "last.pt")
    assert set(s1["final"]) >= {"vsc", "mcr", "loss", "lr", "grad_norm"}
    s2 = pretrain(wh, "stage2", config="tiny", steps=3, out_dir=out, tracking_uri=uri,
                  init_from=s1["checkpoint"])
    assert s2["steps"] == 3 and "itm" in s2["final"]

    client = mlflow.MlflowClient(uri)
    r1, r2 = client.get_run(s1["run_id"]), client.get_run(s2["run_id"])
    assert r1.info.run_name == "stage1" and r2.info.run_name == "stage2"
    for r in (r1, r2):
        assert r.data.tags["feature_set"] == fs and r.data.tags["vocab"] == vocab
        assert r.data.tags["git_commit"]
        assert r.data.params["model.feature_set"] == fs
        assert r.data.params["model.hidden"] == "32" and r.data.params["train.lr"] == "0.001"
        files = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert "config.yaml" in files
        assert [a.path for a in client.list_artifacts(r.info.run_id, "checkpoints")] == [
            "checkpoints/last.pt"]
    assert r1.data.params["train.stage"] == "stage1" and r2.data.params["train.stage"] == "stage2"
    assert r1.data.params["train.losses"] == "vsc,mcr"
    for r in (r1, r2):   # every training run samples CPU and memory while it runs
        cpu = client.get_metric_history(r.info.run_id, "system/cpu_utilization_percentage")
        assert cpu and all(0 <= m.value <= 100 for m in cpu)
        assert client.get_metric_history(r.info.run_id, "system/system_memory_usage_megabytes")
    vsc = _history(client, s1["run_id"], "vsc")
    assert [s for s, _ in vsc] == [1, 2, 3, 4] and vsc[-1][1] == pytest.approx(s1["final"]["vsc"])
    assert "itm" not in r1.data.metrics
    assert [s for s, _ in _history(client, s2["run_id"], "itm")] == [1, 2, 3]
    for key in ("lr", "grad_norm", "samples_per_s", "data_wait_s", "mlm", "wpg"):
        assert len(_history(client, s2["run_id"], key)) == 3, key
    # the cross-modal diagnostics, at the last step (every 50 by default)
    for key in ("grad_norm_itm", "grad_norm_mlm", "grad_norm_wpg", "itm_acc_positive",
                "itm_acc_random_negative", "itm_acc_chosen_negative", "mlm_acc_matched",
                "mlm_acc_shuffled"):
        assert [s for s, _ in _history(client, s2["run_id"], f"diag/{key}")] == [3], key
    assert not any(k.startswith("diag/") for k in r1.data.metrics)   # stage1 has no fusion

    # stage2 started from stage1's weights, not from a fresh init
    a = load_checkpoint(s1["checkpoint"])["model"]
    s2_fresh = pretrain(wh, "stage2", config="tiny", steps=0, out_dir=tmp_path / "w",
                        tracking_uri=uri, init_from=s1["checkpoint"])
    b = load_checkpoint(s2_fresh["checkpoint"])["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_resume_logs_the_same_losses_as_an_uninterrupted_run(built, tmp_path):
    wh = built[0]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # tiny batches (8) over ~30 captions: 4 steps stay in epoch 0; 6 steps cross into epoch 1
    full = pretrain(wh, "joint", config="tiny", steps=6, out_dir=tmp_path / "full",
                    tracking_uri=uri)
    part = pretrain(wh, "joint", config="tiny", steps=3, out_dir=tmp_path / "part",
                    tracking_uri=uri)
    rest = pretrain(wh, "joint", config="tiny", steps=6, out_dir=tmp_path / "part",
                    tracking_uri=uri, resume=True)
    assert rest["run_id"] == part["run_id"] and rest["steps"] == 6
    client = mlflow.MlflowClient(uri)
    for key in ("loss", "vsc", "mcr", "itm", "mlm", "wpg", "lr"):
        resumed = _history(client, rest["run_id"], key)
        assert [s for s, _ in resumed] == [1, 2, 3, 4, 5, 6], key
        assert resumed[3:] == _history(client, full["run_id"], key)[3:], key
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        pretrain(wh, "joint", config="tiny", steps=2, out_dir=tmp_path / "none",
                 tracking_uri=uri, resume=True)


@pytest.mark.slow
def test_mvp_pretrain_command_runs_the_flow(built, tmp_path, monkeypatch):
    from flows.cli import main
    wh = built[0]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    assert main(["pretrain", "--warehouse", str(wh), "--stage", "stage1", "--config", "tiny",
                 "--steps", "2", "--out-dir", str(tmp_path / "runs")]) == 0
    ckpt = load_checkpoint(tmp_path / "runs" / "stage1" / "last.pt")
    assert ckpt["step"] == 2 and ckpt["data_position"]["index"] == 16  # 2 batches of 8
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("mvp-pretrain").experiment_id])
    assert [r.info.run_name for r in runs] == ["stage1"]


@pytest.mark.slow
def test_a_variant_and_retrieval_fine_tuning(built, tmp_path):
    """`joint` without WPG as a flow runs it (train_overrides, its own run name), then retrieval
    fine-tuning from its checkpoint."""
    wh = built[0]
    uri = f"sqlite:///{built[3]}/variants.db"
    out = pretrain(wh, "joint", config="tiny", steps=2, out_dir=tmp_path / "no-wpg",
                   tracking_uri=uri, train_overrides={"wpg": 0, "negatives": "random"},
                   run_name="joint-no-wpg")
    assert "wpg" not in out["final"] and {"itm", "mlm", "mcr"} <= set(out["final"])
    run = mlflow.MlflowClient(uri).get_run(out["run_id"])
    assert run.info.run_name == "joint-no-wpg"
    assert run.data.params["train.wpg"] == "0" and run.data.params["train.negatives"] == "random"
    assert run.data.params["train.losses"] == "vsc,mcr,itm,mlm"
    with pytest.raises(ValueError, match="retrieval fine-tunes a pre-trained model"):
        pretrain(wh, "retrieval", config="tiny", steps=1, out_dir=tmp_path / "r", tracking_uri=uri)
    ft = pretrain(wh, "retrieval", config="tiny", steps=1, out_dir=tmp_path / "r",
                  tracking_uri=uri, init_from=out["checkpoint"])
    assert set(ft["final"]) >= {"vsc", "itm"} and not {"mcr", "mlm", "wpg"} & set(ft["final"])
    assert ft["checkpoint"] == str(tmp_path / "r" / "retrieval" / "last.pt")


@pytest.mark.slow
def test_evaluation_takes_the_majority_word_training_recorded(built, tmp_path, monkeypatch):
    from model.downstream import evaluate as evaluation
    from model.training.data import PretrainData
    wh, fs, vocab, _ = built
    run = pretrain(wh, "joint", config="tiny", steps=2, out_dir=tmp_path,
                   tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", diagnose_every=0)
    recorded = load_checkpoint(run["checkpoint"])["data_position"]["majority_word"]
    cfg = evaluation.load_mvp(run["checkpoint"])[0].cfg
    assert recorded == PretrainData(wh, fs, vocab, cfg, split="train").majority_word()
    splits = []

    class Recording(PretrainData):
        def __init__(self, *args, split="train", **kwargs):
            splits.append(split)
            super().__init__(*args, split=split, **kwargs)
    monkeypatch.setattr(evaluation, "PretrainData", Recording)
    out = evaluation.evaluate(run["checkpoint"], wh, split=None, k_text=4, k_image=2)
    assert out["mlm_majority_token"] == recorded and splits == [None]   # no train split read
