"""Retrieval metrics and ITM re-ranking on hand-made score matrices."""
import pytest
import torch

from model.downstream.retrieval import (
    ann_ranks,
    chance_recall_at_1,
    dual_ranks,
    recall_at_k,
    recall_at_k_chunked,
    rerank,
    rerank_recall,
)

# 4 captions of 3 images: captions 0, 1 of image 0, caption 2 of image 1, caption 3 of image 2
TEXT_IMAGE = torch.tensor([0, 0, 1, 2])
SIM = torch.tensor([
    [0.9, 0.1, 0.2],   # caption 0: gold image 0 first                     -> t2i rank 0
    [0.1, 0.5, 0.3],   # caption 1: gold image 0 last                      -> t2i rank 2
    [0.2, 0.4, 0.6],   # caption 2: gold image 1 second (image 2 above)    -> t2i rank 1
    [0.3, 0.2, 0.8],   # caption 3: gold image 2 first                     -> t2i rank 0
])
# i2t, per column: image 0's captions (0, 1) best 0.9, top of column  -> rank 0
#                  image 1's caption 2 scores 0.4, caption 1 has 0.5  -> rank 1
#                  image 2's caption 3 scores 0.8, the column's best  -> rank 0


def test_recall_by_hand():
    r = recall_at_k(SIM, TEXT_IMAGE, ks=(1, 2, 3))
    assert r["t2i_r1"] == pytest.approx(2 / 4)
    assert r["t2i_r2"] == pytest.approx(3 / 4)
    assert r["t2i_r3"] == pytest.approx(1.0)
    assert r["i2t_r1"] == pytest.approx(2 / 3)
    assert r["i2t_r2"] == pytest.approx(1.0)
    assert r["rsum"] == pytest.approx(2 / 4 + 3 / 4 + 1 + 2 / 3 + 1 + 1)


def test_default_ks_with_fewer_images_than_k():
    r = recall_at_k(SIM, TEXT_IMAGE)
    assert set(r) == {"t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "rsum"}
    # 3 images, 4 captions: every gold item is within the top 5
    assert r["t2i_r5"] == r["t2i_r10"] == r["i2t_r5"] == r["i2t_r10"] == 1.0


def test_ties_count_against_the_gold_item():
    flat = torch.zeros(4, 3)
    r = recall_at_k(flat, TEXT_IMAGE, ks=(1, 3))
    assert r["t2i_r1"] == 0.0 and r["i2t_r1"] == 0.0
    assert r["t2i_r3"] == 1.0                      # 3 images: rank 2 < 3
    # caption 2 ties its gold image 1 with image 2: rank 1, not 0
    sim = SIM.clone()
    sim[2, 2] = 0.4
    assert recall_at_k(sim, TEXT_IMAGE, ks=(1,))["t2i_r1"] == pytest.approx(2 / 4)
    sim[2, 1] = 0.41                               # now strictly first
    assert recall_at_k(sim, TEXT_IMAGE, ks=(1,))["t2i_r1"] == pytest.approx(3 / 4)


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_scores_a_rounding_apart_are_ties_whichever_way_the_rounding_went(direction):
    # caption 1 repeats caption 0's text but belongs to image 1; a matmul gave its score on
    # image 0 one float32 ulp above or below caption 0's: either way a tie, counted against
    # image 0 (i2t), and caption 0's other image ties its gold one likewise (t2i)
    sim = torch.tensor([[0.5, 0.5], [0.5, 0.9], [0.1, 0.9]])
    step = torch.tensor(direction)
    sim[1, 0] = torch.nextafter(sim[1, 0], step)
    sim[0, 1] = torch.nextafter(sim[0, 1], step)
    text_image = torch.tensor([0, 1, 1])
    for got in (recall_at_k(sim, text_image),
                recall_at_k_chunked(sim, torch.eye(2), text_image, chunk=1)):
        assert got["t2i_r1"] == pytest.approx(2 / 3)   # caption 0 ties: a miss
        assert got["i2t_r1"] == pytest.approx(0.5)     # image 0 tied by caption 1: a miss


def test_image_without_captions_is_left_out_of_i2t():
    sim = torch.cat([SIM, torch.full((4, 1), 5.0)], dim=1)   # image 3: top of every row, no caption
    r = recall_at_k(sim, TEXT_IMAGE, ks=(1,))
    assert r["t2i_r1"] == 0.0                                 # it beats every gold image
    assert r["i2t_r1"] == pytest.approx(2 / 3)                # still 3 images with captions


def test_i2t_sim_is_read_for_the_image_direction_only():
    other = SIM.clone()
    other[1, 1] = 0.0   # caption 1 no longer beats caption 2 in column 1
    r = recall_at_k(SIM, TEXT_IMAGE, ks=(1,), i2t_sim=other)
    assert r["t2i_r1"] == pytest.approx(2 / 4) and r["i2t_r1"] == 1.0


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_recall_equals_the_dense_one_ties_included(chunk):
    g = torch.Generator().manual_seed(0)
    # scores on a coarse grid (exact in float32 whichever way the products are summed), so
    # ties are frequent; 60 captions of 25 images, 5 images without captions
    image_g = torch.randint(-2, 3, (30, 4), generator=g).float()
    text_image = torch.randint(0, 25, (60,), generator=g)
    text_g = image_g[text_image] + torch.randint(-2, 3, (60, 4), generator=g).float()
    dense = recall_at_k(text_g @ image_g.t(), text_image)
    assert recall_at_k_chunked(text_g, image_g, text_image, chunk=chunk) == dense
    assert 0 < dense["t2i_r1"] < 1 and 0 < dense["i2t_r1"] < 1   # not a trivial ranking
    assert recall_at_k_chunked(text_g, image_g, text_image, chunk=chunk, ks=(1,)) == {
        k: dense[k] for k in ("t2i_r1", "i2t_r1")} | {"rsum": dense["t2i_r1"] + dense["i2t_r1"]}


def test_chance():
    c = chance_recall_at_1(TEXT_IMAGE, 3)
    assert c["t2i"] == pytest.approx(1 / 3)
    assert c["i2t"] == pytest.approx((2 / 4 + 1 / 4 + 1 / 4) / 3)
    # chance matches the mean R@1 over random score matrices
    g = torch.Generator().manual_seed(0)
    mean = sum(recall_at_k(torch.rand(4, 3, generator=g), TEXT_IMAGE, ks=(1,))["i2t_r1"]
               for _ in range(1000)) / 1000
    assert mean == pytest.approx(c["i2t"], abs=0.03)  # ~3.5 standard errors


def _scorer(table: torch.Tensor, calls: list):
    def score(text_rows, image_rows):
        calls.append(len(text_rows))
        return table[text_rows, image_rows]
    return score


def test_rerank_moves_the_itm_choice_to_the_top():
    # one caption, 5 images; gold image 2 is third by the dual encoder, first by ITM
    sim = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]])
    itm = torch.tensor([[0.2, 0.1, 0.95, 0.99, 0.0]])   # image 3 is outside the top 3
    calls = []
    t2i, i2t = rerank(sim, _scorer(itm, calls), k_text=1, k_image=3)
    assert t2i[0].argsort(descending=True).tolist() == [2, 0, 1, 3, 4]
    assert recall_at_k(sim, torch.tensor([2]), ks=(1,))["t2i_r1"] == 0.0
    assert recall_at_k(t2i, torch.tensor([2]), ks=(1,), i2t_sim=i2t)["t2i_r1"] == 1.0
    # i2t: each column's single caption is its top 1, so every pair was scored, once
    assert sum(calls) == 5
    assert torch.equal(i2t, itm)


def test_rerank_by_columns_and_batching():
    # 4 captions x 2 images; image 0's top-2 captions by sim are 0, 1; ITM prefers caption 1
    sim = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.1, 0.95]])
    itm = torch.tensor([[0.1, 0.0], [0.9, 0.0], [1.0, 0.0], [0.0, 0.5]])
    calls = []
    t2i, i2t = rerank(sim, _scorer(itm, calls), k_text=2, k_image=1, batch_size=2)
    assert max(calls) <= 2
    # column 0: captions 1, 0 re-ordered by ITM, then caption 2 (ITM 1.0 but outside the top 2)
    # and caption 3, in dual-encoder order
    assert i2t[:, 0].argsort(descending=True).tolist() == [1, 0, 2, 3]
    assert i2t[:, 1].argsort(descending=True).tolist() == [3, 2, 1, 0]
    # rows with k_image=1: the top image is the only candidate, the order is the dual encoder's
    assert torch.equal(t2i.argmax(1), sim.argmax(1))
    r = recall_at_k(t2i, torch.tensor([1, 0, 0, 1]), ks=(1,), i2t_sim=i2t)
    assert r["i2t_r1"] == 1.0 and r["t2i_r1"] == pytest.approx(3 / 4)  # caption 0 misses


@pytest.mark.parametrize(("chunk", "k_text", "k_image"), [(1, 3, 2), (7, 5, 4), (1000, 100, 40)])
def test_chunked_rerank_equals_the_dense_one(chunk, k_text, k_image):
    g = torch.Generator().manual_seed(1)
    # 60 captions of 30 images (5 without captions); distinct scores both ways, so the top-k
    # candidate sets are the same however the chunks cut the captions
    image_g = torch.randn(30, 8, generator=g)
    text_image = torch.randint(0, 25, (60,), generator=g)
    text_g = image_g[text_image] + 1.5 * torch.randn(60, 8, generator=g)
    itm = torch.rand(60, 30, generator=g)
    dense_calls, calls = [], []
    t2i, i2t = rerank(text_g @ image_g.t(), _scorer(itm, dense_calls), k_text=k_text,
                      k_image=k_image)
    dense = recall_at_k(t2i, text_image, i2t_sim=i2t)
    ranks = dual_ranks(text_g, image_g, text_image, chunk=chunk, k_text=k_text, k_image=k_image)
    got = rerank_recall(ranks, text_image, _scorer(itm, calls))
    assert got == dense
    assert got != recall_at_k(text_g @ image_g.t(), text_image)   # ITM changed the ranking
    assert calls == [sum(dense_calls)]             # the same pairs, each once, in one call
    assert ranks.t2i_top.shape == (60, min(k_image, 30))
    assert ranks.i2t_top.shape == (min(k_text, 60), 30)


def test_a_scorer_that_drops_pairs_is_refused():
    ranks = dual_ranks(SIM, torch.eye(3), TEXT_IMAGE, k_text=1, k_image=1)
    with pytest.raises(ValueError, match="scores for"):
        rerank_recall(ranks, TEXT_IMAGE, lambda t, i: torch.zeros(len(t) - 1))


@pytest.mark.parametrize("exact_up_to", [None, 10])
def test_ranks_from_an_index_equal_the_scan_within_its_depth(exact_up_to):
    """ann_ranks with an exact index is dual_ranks for every k within its depth, re-ranked too;
    with an inverted file of every cell scanned, the same."""
    # exact_up_to 10: an inverted file over 30 images / 60 captions, every cell scanned
    index = {} if exact_up_to is None else {"exact_up_to": exact_up_to, "nprobe": 10_000}
    g = torch.Generator().manual_seed(2)
    unit = torch.nn.functional.normalize   # the model's g vectors: cosine = the dot product
    image_g = unit(torch.randn(30, 8, generator=g), dim=-1)
    text_image = torch.randint(0, 25, (60,), generator=g)
    text_g = unit(image_g[text_image] + 0.4 * torch.randn(60, 8, generator=g), dim=-1)
    itm = torch.rand(60, 30, generator=g)
    scan = dual_ranks(text_g, image_g, text_image, k_text=12, k_image=10)
    ann = ann_ranks(text_g, image_g, text_image, k_text=12, k_image=10, **index)
    assert ann.recalls() == scan.recalls()
    assert torch.equal(ann.t2i_top, scan.t2i_top) and torch.equal(ann.i2t_top, scan.i2t_top)
    assert rerank_recall(ann, text_image, _scorer(itm, [])) == \
        rerank_recall(scan, text_image, _scorer(itm, []))
    assert (ann.t2i <= 10).all() and (scan.t2i > 10).any()   # beyond the depth: capped, a miss
