"""Referring-expression comprehension: IoU targets by hand, the intermediate fusion layer, the
authors' cosine head and its MSE, a tracked fine-tune on shapes expressions with its evaluation
and chance, an exact load and resume, and the grounding picture."""
import math

import mlflow
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import synthetic_batch
from PIL import Image

from model.config import load_config
from model.downstream.refexp.data import ReferringBatch, ReferringData, box_iou
from model.downstream.refexp.finetune import (
    ReferringModel,
    evaluate_refexp,
    finetune_refexp,
    fusion_layer,
    load_refexp,
    refer,
)
from model.mvp import MVP
from model.training.checkpoint import load_checkpoint
from warehouse.catalog import connect


@pytest.fixture(scope="module")
def shapes(tmp_path_factory, tiny_feature_store):
    tmp = tmp_path_factory.mktemp("refexp")
    wh, fs, _ = tiny_feature_store(tmp)
    cfg = load_config("tiny", feat_dim=fs["dim"], feature_set=fs["feature_set"])
    return wh, fs["feature_set"], cfg, tmp


def _referring_batch(cfg, B=4, R=5) -> ReferringBatch:
    s = synthetic_batch(cfg, 0, 0, B=B, R=R)
    targets = torch.rand(B, R, generator=torch.Generator().manual_seed(1))
    targets[~s.visual.region_mask] = 0
    return ReferringBatch(token_ids=s.token_ids, token_mask=s.token_mask, visual=s.visual,
                          image_index=s.image_index, targets=targets,
                          index=torch.arange(B), expression_ids=[f"x{i}" for i in range(B)],
                          image_ids=s.image_ids)


# ---- IoU targets ----

def test_box_iou_by_hand():
    boxes = np.array([[0, 0, 2, 2], [1, 1, 3, 3], [2, 0, 4, 2], [5, 5, 6, 6], [0, 0, 1, 2]],
                     np.float32)
    # the same box; a 1x1 overlap of two 2x2 boxes (1 / (4 + 4 - 1)); touching edges; apart;
    # inside it (2 / 4)
    np.testing.assert_allclose(box_iou(boxes, np.array([0, 0, 2, 2], np.float32)),
                               [1, 1 / 7, 0, 0, 0.5], rtol=1e-6)
    # IoU does not change when both boxes are scaled by the image's width and height
    scale = np.array([0.1, 0.25, 0.1, 0.25], np.float32)
    np.testing.assert_allclose(box_iou(boxes * scale, np.array([0, 0, 2, 2]) * scale),
                               [1, 1 / 7, 0, 0, 0.5], rtol=1e-5)


def test_targets_are_each_candidates_iou_with_the_gold_box(shapes):
    wh, fs, cfg, _ = shapes
    data = ReferringData(wh, fs, cfg, split=None)
    assert len(data) >= 12 and data.n_without_features == 0
    with connect(wh) as con:
        gold = {i: (x1, y1, x2, y2) for i, x1, y1, x2, y2 in con.sql(
            "SELECT r.id, g.x1, g.y1, g.x2, g.y2 FROM referring r "
            "JOIN regions g ON g.region_id = r.region_id").fetchall()}
        pixels = {r: (x1, y1, x2, y2) for r, x1, y1, x2, y2 in con.sql(
            "SELECT region_id, x1, y1, x2, y2 FROM region_features WHERE feature_set = ?",
            params=[fs]).fetchall()}
    for i, (xid, row) in enumerate(zip(data.expression_ids, data.image_of)):
        r0, r1 = data.images.regions.offsets[row:row + 2]
        # the candidates' pixel boxes in the order the model sees them, IoU in pixels by hand
        gx1, gy1, gx2, gy2 = gold[xid]
        by_hand = []
        for r in data.images.regions.region_id[r0:min(r1, r0 + cfg.max_regions)]:
            x1, y1, x2, y2 = pixels[r]
            inter = max(0, min(x2, gx2) - max(x1, gx1)) * max(0, min(y2, gy2) - max(y1, gy1))
            by_hand.append(inter / ((x2 - x1) * (y2 - y1) + (gx2 - gx1) * (gy2 - gy1) - inter))
        assert len(data.targets[i]) == min(r1 - r0, cfg.max_regions)
        np.testing.assert_allclose(data.targets[i], by_hand, atol=1e-4)
    # shapes boxes are the annotations themselves: the referred object is a candidate
    assert data.n_gold_unreachable == 0
    assert all(t.max() == pytest.approx(1.0) for t in data.targets)
    b = data.collate([data[i] for i in range(4)])
    assert b.targets.shape == b.visual.region_mask.shape
    assert (b.targets[~b.visual.region_mask] == 0).all()


# ---- the intermediate layer and the head ----

def _by_hand(mvp, batch, layers):
    """The cross encoder run block by block to `layers`, then its final LayerNorm."""
    text = mvp.encode_text(batch.token_ids, batch.token_mask)
    visual = mvp.encode_visual(batch.visual)
    x = torch.cat([text.hidden, visual.region_hidden], 1)
    bias = torch.cat([text.mask, visual.region_mask], 1)[:, None, None, :]
    for block in mvp.cross_encoder.blocks[:layers]:
        x = block(x, bias, text.hidden.shape[1])
    return mvp.cross_encoder.ln_f(x), text.hidden.shape[1]


def test_fuse_reads_an_intermediate_layer_and_leaves_the_default_alone():
    cfg = load_config("tiny", cross_layers=3)
    torch.manual_seed(0)
    mvp = MVP(cfg).eval()
    b = _referring_batch(cfg)
    with torch.no_grad():
        text, visual = mvp.encode_text(b.token_ids, b.token_mask), mvp.encode_visual(b.visual)
        full = mvp.fuse(text, visual)
        torch.testing.assert_close(full.hidden, _by_hand(mvp, b, 3)[0])
        torch.testing.assert_close(mvp.fuse(text, visual, layers=3).hidden, full.hidden)
        two = mvp.fuse(text, visual, layers=2)
        torch.testing.assert_close(two.hidden, _by_hand(mvp, b, 2)[0])
        assert not torch.allclose(two.hidden, full.hidden)
        torch.testing.assert_close(two.pooled, mvp.pooler(two.hidden[:, 0]))


def test_layer_is_the_authors_fraction_of_the_cross_encoder():
    # the authors: after 3 of 6 cross layers
    assert [fusion_layer(load_config(p)) for p in ("base", "small", "tiny")] == [3, 1, 1]
    assert fusion_layer(load_config("tiny", cross_layers=4)) == 2


def test_head_scores_are_cosines_at_the_layer_and_the_loss_their_mse():
    cfg = load_config("tiny", cross_layers=4, dropout=0.1)
    torch.manual_seed(0)
    model = ReferringModel(MVP(cfg)).eval()
    assert model.layer == 2
    b = _referring_batch(cfg)
    with torch.no_grad():
        h, Lt = _by_hand(model.mvp, b, 2)
        cos = F.cosine_similarity(h[:, Lt:], h[:, :1], dim=-1)
        scores = model.scores(b)
        torch.testing.assert_close(scores, cos)
        out = model(b)
    real = b.visual.region_mask
    assert not real.all()   # a padded region: left out of the loss and the choice
    errors = [(cos[i, r] - b.targets[i, r]) ** 2 for i in range(4) for r in range(5) if real[i, r]]
    assert out["loss"].item() == pytest.approx(float(sum(errors) / len(errors)), rel=1e-5)
    chosen, best = refer(model, b)
    assert torch.equal(chosen, cos.masked_fill(~real, -math.inf).argmax(1))
    torch.testing.assert_close(best, cos[torch.arange(4), chosen])
    hit = (b.targets[torch.arange(4), chosen] >= 0.5).float().mean()
    assert out["train_acc"].item() == pytest.approx(hit.item())
    # dropout (the model's rate, as the authors' head) in training only
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model.scores(b), scores)


# ---- fine-tuning, evaluation, picture ----

@pytest.fixture(scope="module")
def tuned(shapes):
    wh, _, _, tmp = shapes
    uri = f"sqlite:///{tmp}/mlflow.db"
    return finetune_refexp(wh, None, config="tiny", steps=20, out_dir=tmp / "ft",
                           tracking_uri=uri, eval_split="train"), uri


@pytest.mark.slow
def test_finetune_is_tracked_and_evaluates_against_chance(shapes, tuned):
    wh, fs, _, _ = shapes
    r, uri = tuned
    client = mlflow.MlflowClient(uri)
    run = client.get_run(r["run_id"])
    assert run.info.run_name == "refexp" and run.data.tags["task"] == "refexp"
    assert run.data.tags["feature_set"] == fs
    loss = [m.value for m in sorted(client.get_metric_history(r["run_id"], "loss"),
                                    key=lambda m: m.step)]
    assert len(loss) == 20 and all(0 <= v <= 4 for v in loss)   # cosine and IoU both in [-1, 1]
    assert len(client.get_metric_history(r["run_id"], "train_acc")) == 20
    e = r["eval"]
    assert run.data.metrics["train_refexp_acc"] == pytest.approx(e["refexp_acc"])
    assert run.data.metrics["train_chance"] == pytest.approx(e["chance"])
    assert 0 <= e["refexp_acc"] <= 1 and e["n_expressions"] >= 10
    assert e["n_without_features"] == 0 and e["n_gold_unreachable"] == 0 and e["upper_bound"] == 1
    # one candidate (the object itself) matches: chance is the mean of 1 / #candidates
    data = ReferringData(wh, fs, load_refexp(r["checkpoint"]).cfg, split="train")
    assert e["chance"] == pytest.approx(np.mean([1 / len(t) for t in data.targets]))
    assert 0 < e["chance"] < 1
    assert set(r["baselines"]) == {"largest_region"}
    assert 0 <= r["baselines"]["largest_region"]["refexp_acc"] <= 1
    # the checkpoint alone reproduces the evaluation
    assert evaluate_refexp(r["checkpoint"], wh, "train") == e


@pytest.mark.slow
def test_a_loaded_checkpoint_scores_identically(shapes, tuned):
    wh, fs, _, _ = shapes
    r, _ = tuned
    model = load_refexp(r["checkpoint"])
    again = load_refexp(load_checkpoint(r["checkpoint"]))
    data = ReferringData(wh, fs, model.cfg, split="train")
    b = data.collate([data[i] for i in range(len(data))])
    with torch.no_grad():
        assert torch.equal(model.scores(b), again.scores(b))
    state = load_checkpoint(r["checkpoint"])
    state["model"]["_extra_state"] = {"layer": 2}
    with pytest.raises(ValueError, match="layer"):
        load_refexp(state)


@pytest.mark.slow
def test_the_picture_is_a_png_of_its_size(shapes, tuned):
    from model.pipeline.refexp_picture import referring_picture
    wh, fs, _, tmp = shapes
    model = load_refexp(tuned[0]["checkpoint"])
    data = ReferringData(wh, fs, model.cfg, split="train")
    path = referring_picture(model, data, 0, tmp / "pictures" / "refexp.png", wh)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (600, 600)
