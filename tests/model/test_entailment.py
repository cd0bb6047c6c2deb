"""Visual entailment: the head reads the pooler as the authors' classifier does, accuracy and its
baselines on hand values, and a tracked fine-tune on shapes hypotheses that lowers the loss, from
the same checkpoint as its evaluation."""
import mlflow
import pytest
import torch
import torch.nn.functional as F

from model.config import load_config
from model.downstream.entailment.data import EntailmentData
from model.downstream.entailment.finetune import (
    EntailmentModel,
    accuracy_report,
    evaluate_ve,
    finetune_ve,
    load_ve,
    serve,
)
from model.mvp import MVP
from warehouse.schemas import ENTAILMENT_LABELS


@pytest.fixture(scope="module")
def shapes(tmp_path_factory, tiny_feature_store):
    tmp = tmp_path_factory.mktemp("ve")
    wh, fs, _ = tiny_feature_store(tmp)
    cfg = load_config("tiny", feat_dim=fs["dim"], feature_set=fs["feature_set"])
    return wh, fs["feature_set"], cfg, tmp


def test_accuracy_report_on_hand_values():
    # labels: E E N C C C; predictions right on rows 0, 2, 3
    r = accuracy_report([0, 2, 1, 2, 0, 1], [0, 0, 1, 2, 2, 2])
    assert r["ve_acc"] == pytest.approx(3 / 6) and r["n_hypotheses"] == 6
    assert r["by_label"] == {"entailment": 0.5, "neutral": 1.0,
                             "contradiction": pytest.approx(1 / 3)}
    assert r["label_share"]["contradiction"] == 0.5 and r["best_constant"] == 0.5
    assert r["chance"] == pytest.approx(1 / 3)
    assert accuracy_report([], [])["by_label"]["neutral"] is None


def test_data_has_every_label_and_the_hypothesis_text(shapes):
    wh, fs, cfg, _ = shapes
    data = EntailmentData(wh, fs, cfg, split="train")
    assert len(data) > 0 and data.n_without_features == 0
    # shapes writes one hypothesis of each label per scene
    counts = torch.bincount(torch.tensor(data.labels), minlength=3)
    assert counts.tolist() == [len(data) // 3] * 3
    batch = data.collate([data[i] for i in range(4)])
    assert batch.labels.tolist() == data.labels[:4]
    assert batch.token_ids.shape[0] == 4 and batch.visual.regions.shape[0] == 4
    assert (batch.token_ids[:, 0] == cfg.cls_id).all()


def test_the_head_is_a_linear_classifier_on_the_pooled_output(shapes):
    wh, fs, cfg, _ = shapes
    data = EntailmentData(wh, fs, cfg, split="train")
    torch.manual_seed(0)
    model = EntailmentModel(MVP(cfg)).eval()
    batch = data.collate([data[i] for i in range(3)])
    m = model.mvp
    pooled = m.fuse(m.encode_text(batch.token_ids, batch.token_mask),
                    m.encode_visual(batch.visual)).pooled
    expected = pooled @ model.classifier.weight.t() + model.classifier.bias
    assert torch.allclose(model.logits(batch), expected, atol=1e-5)
    out = model(batch)   # eval mode: no dropout, so the loss is the logits' cross-entropy
    assert out["loss"].item() == pytest.approx(
        F.cross_entropy(expected, batch.labels).item(), rel=1e-5)
    assert out["train_acc"].item() == (expected.argmax(1) == batch.labels).float().mean().item()
    cells = serve(model, batch, None)
    probs = model.logits(batch).softmax(1)
    assert [c["entailment"] for c in cells] == [ENTAILMENT_LABELS[k] for k in probs.argmax(1)]
    assert all(sum(c["entailment_probs"]) == pytest.approx(1.0) for c in cells)


@pytest.mark.slow
def test_finetune_lowers_the_loss_is_tracked_and_reloads(shapes):
    wh, fs, _, tmp = shapes
    uri = f"sqlite:///{tmp}/mlflow.db"
    r = finetune_ve(wh, None, config="tiny", steps=30, out_dir=tmp / "ft", tracking_uri=uri,
                    eval_split="train", lr=1e-3)
    client = mlflow.MlflowClient(uri)
    run = client.get_run(r["run_id"])
    assert run.info.run_name == "ve" and run.data.tags["task"] == "ve"
    loss = [m.value for m in sorted(client.get_metric_history(r["run_id"], "loss"),
                                    key=lambda m: m.step)]
    assert len(loss) == 30
    # from ln 3 = 1.10 (three balanced classes, logits near 0) down
    assert sum(loss[-5:]) / 5 < sum(loss[:5]) / 5
    assert run.data.metrics["train_ve_acc"] == pytest.approx(r["eval"]["ve_acc"])
    assert r["eval"]["chance"] == pytest.approx(1 / 3)
    # the checkpoint alone reproduces the evaluation
    assert evaluate_ve(r["checkpoint"], wh, "train") == r["eval"]
    assert isinstance(load_ve(r["checkpoint"]), EntailmentModel)
