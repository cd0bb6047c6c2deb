"""Evaluation end to end on the tiny feature store: embeddings that do not depend on batching,
re-ranking by the model's own ITM, MLM accuracy on the masked positions, and what a stage-1
checkpoint is (and is not) scored on."""
import pytest
import torch

from model.batch import assemble_text
from model.config import load_config
from model.downstream.evaluate import (
    embed_split,
    evaluate,
    itm_heldout,
    itm_scorer,
    mlm_accuracy,
    results_rows,
)
from model.mvp import MVP
from model.training.config import load_train_config
from model.training.data import PretrainData
from model.training.task import PretrainTask
from model.training.trainer import Trainer

RECALLS = [f"{d}_r{k}" for d in ("t2i", "i2t") for k in (1, 5, 10)]


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_feature_store):
    tmp = tmp_path_factory.mktemp("evaluate")
    wh, fs, vocab = tiny_feature_store(tmp)
    cfg = load_config("tiny", feat_dim=fs["dim"], n_concepts=vocab["concepts"],
                      feature_set=fs["feature_set"], vocab_version=vocab["vocab"])
    torch.manual_seed(0)
    model = MVP(cfg)
    data = PretrainData(wh, fs["feature_set"], vocab["vocab"], cfg, split=None)  # 36 captions
    return wh, model, data, tmp


def test_embeddings_are_the_encoders_outputs(built):
    _, model, data, _ = built
    emb = embed_split(model, data, batch_size=5)
    n_images = len(data.regions.image_ids)
    assert emb.similarity.shape == (len(data), n_images) == (36, 12)
    assert torch.equal(emb.text_image, torch.from_numpy(data.image_of))
    # each gallery image once and each caption, whatever the batching: text positions count
    # real tokens only, so the padding assemble_text puts before a row's concepts changes nothing
    other = embed_split(model, data, batch_size=64)
    assert torch.allclose(emb.images.g, other.images.g, atol=1e-6)
    assert torch.allclose(emb.text.g, other.text.g, atol=1e-5)
    model.eval()
    with torch.no_grad():
        batch = data.collate([data[i] for i in range(5, 10)])
        ids, mask, _ = assemble_text(batch.token_ids, batch.token_mask, batch.concept_ids,
                                     batch.concept_mask, model.cfg.sep_id, model.cfg.pad_id)
        text = model.encode_text(ids, mask)
        assert torch.allclose(emb.text.g[5:10], text.g, atol=1e-6)
        # ITM of (caption 7, image 3) on the padded, re-assembled rows = the pair fused alone
        image = data.collate([data[int(data.image_of.tolist().index(3))]])
        visual = model.encode_visual(image.visual)
        p = model.itm_logits(model.fuse(text.take(torch.tensor([2])), visual)).softmax(-1)
        assert image.image_index.item() == 3 and visual.g[0].allclose(emb.images.g[3], atol=1e-6)
    got = itm_scorer(model, emb)(torch.tensor([7]), torch.tensor([3]))
    assert got.item() == pytest.approx(p[0, 1].item(), abs=1e-5)


def test_mlm_accuracy_is_scored_on_the_same_positions_as_the_baseline(built):
    _, model, data, _ = built
    first = mlm_accuracy(model, data, seed=3)
    assert first == mlm_accuracy(model, data, seed=3, batch_size=7)  # same masks, any batching
    assert first["mlm_majority_token"] == data.majority_word()
    n_words = int(sum((data.tokens != model.cfg.cls_id)))
    assert 0 < first["mlm_masked_tokens"] < 0.4 * n_words          # ~15% of the words
    # a head that always says the majority token scores exactly the baseline
    tok = first["mlm_majority_token"]
    saved = model.mlm_bias.data.clone()
    model.mlm_bias.data[tok] = 1e4
    try:
        forced = mlm_accuracy(model, data, seed=3)
    finally:
        model.mlm_bias.data.copy_(saved)
    assert forced["mlm_accuracy"] == forced["mlm_majority_baseline"] == \
        first["mlm_majority_baseline"] > 0


def test_held_out_itm_pairs_each_caption_with_its_image_and_another(built, monkeypatch):
    _, model, data, _ = built
    emb = embed_split(model, data)
    seen = []
    real = itm_scorer

    def recording(model, emb):
        score = real(model, emb)

        def wrapped(texts, images):
            seen.extend(zip(texts.tolist(), images.tolist()))
            return score(texts, images)
        return wrapped
    monkeypatch.setattr("model.downstream.evaluate.itm_scorer", recording)
    m = itm_heldout(model, emb, batch_size=10)
    gold = emb.text_image.tolist()
    assert len(seen) == 2 * len(data)
    assert [(t, i) for t, i in seen[:len(data)]] == list(enumerate(gold))
    assert all(t == k and i != gold[k] for k, (t, i) in enumerate(seen[len(data):]))
    # a scorer that always says "match" is right on every positive and no negative
    monkeypatch.setattr("model.downstream.evaluate.itm_scorer",
                        lambda model, emb: lambda t, i: torch.full((len(t),), 0.9))
    always = itm_heldout(model, emb)
    assert always["itm_acc_positive"] == 1.0 and always["itm_acc_random_negative"] == 0.0
    assert all(0 <= m[k] <= 1 for k in m if k != "itm_loss") and m["itm_loss"] > 0


def test_mlm_with_another_image_is_scored_on_the_same_positions(built):
    _, model, data, _ = built
    m = mlm_accuracy(model, data, seed=3)
    assert 0 <= m["mlm_accuracy_shuffled_image"] <= 1
    # a model whose fused text ignores the image (zero region features AND geometry weights,
    # no region attention): matched and shuffled agree exactly
    blind = MVP(model.cfg)
    blind.load_state_dict(model.state_dict())
    with torch.no_grad():
        blind.region_embed.weight.zero_()
        blind.region_embed.bias.zero_()
        blind.visual_segment.weight.zero_()
    b = mlm_accuracy(blind, data, seed=3)
    assert b["mlm_accuracy"] == b["mlm_accuracy_shuffled_image"]


def test_evaluate_a_model_on_the_test_split(built):
    wh, model, _, _ = built
    m = evaluate(model, wh, split="test", k_text=4, k_image=2, batch_size=4)
    held_out = PretrainData(wh, model.cfg.feature_set, model.cfg.vocab_version, model.cfg,
                            split="test")
    n_images = len(held_out.regions.image_ids)
    assert m["n_images"] == n_images and m["n_captions"] == len(held_out) > n_images
    assert m["chance_t2i_r1"] == pytest.approx(1 / n_images)
    counts = torch.bincount(torch.from_numpy(held_out.image_of)).double()
    assert m["chance_i2t_r1"] == pytest.approx((counts / len(held_out)).mean().item())
    # with one test image there is no other image to pair a caption with
    itm = ["itm_acc_positive", "itm_acc_random_negative"] if n_images > 1 else []
    assert (("itm_loss" in m) == (n_images > 1))
    for key in RECALLS + [f"rerank_{k}" for k in RECALLS] + [
            "mlm_accuracy", "mlm_majority_baseline", "mlm_accuracy_shuffled_image"] + itm:
        assert 0.0 <= m[key] <= 1.0, key
    assert m["rerank_k_image"] == min(2, n_images) and m["stage"] == "model"
    rows = dict(results_rows(m))
    assert rows["n_images"] == str(n_images) and rows["t2i_r1"].endswith("%")


def test_stage1_checkpoint_is_a_dual_encoder_only(built):
    wh, model, data, tmp = built
    tcfg = load_train_config("tiny", stage="stage1")
    path = tmp / "stage1.pt"
    Trainer(PretrainTask(model, tcfg), tcfg).save(path)
    m = evaluate(path, wh, split=None, batch_size=16)
    assert m["stage"] == "stage1" and m["n_captions"] == 36 and m["n_images"] == 12
    assert not any(k.startswith(("rerank_", "mlm_")) for k in m)
    # the checkpoint's weights are the model's: same dual-encoder metrics
    direct = evaluate(model, wh, split=None, batch_size=16, k_text=2, k_image=2)
    assert all(m[k] == direct[k] for k in RECALLS + ["rsum"])
