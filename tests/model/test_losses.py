"""Each loss against a value computed by hand (math, not the code under test), plus edge cases."""
import math

import pytest
import torch

from model.losses import (
    IGNORE,
    itm,
    itm_negatives,
    mamo,
    mamo_explicit,
    mcr,
    mlm,
    psl,
    vsc,
    wpg,
    xmm,
)

R2 = math.sqrt(0.5)  # cos 45°


def lse(*xs):
    return math.log(sum(math.exp(x) for x in xs))


def test_vsc_symmetric_infonce():
    sim = torch.tensor([[2.0, 0.5], [1.0, 3.0]])
    rows = ((-2 + lse(2, 0.5)) + (-3 + lse(1, 3))) / 2      # text -> image
    cols = ((-2 + lse(2, 1)) + (-3 + lse(0.5, 3))) / 2      # image -> text
    assert vsc(sim).item() == pytest.approx((rows + cols) / 2, rel=1e-6)
    assert rows != pytest.approx(cols)  # the test would catch a one-directional loss


def test_vsc_against_gathered_candidates_leaves_out_the_same_image():
    # this rank's 2 pairs against 3 candidates (its own at columns 1, 2); column 0 shows row
    # 0's image again: another caption of it, so neither its pair nor a negative
    t2v = torch.tensor([[4.0, 2.0, 0.5], [1.0, 1.0, 3.0]])
    v2t = torch.tensor([[3.0, 1.0, 0.0], [2.0, 0.5, 2.5]])
    exclude = torch.tensor([[True, False, False], [False, False, False]])
    rows = ((-2 + lse(2, 0.5)) + (-3 + lse(1, 1, 3))) / 2
    cols = ((-1 + lse(1, 0)) + (-2.5 + lse(2, 0.5, 2.5))) / 2
    got = vsc(t2v, v2t, torch.tensor([1, 2]), exclude)
    assert got.item() == pytest.approx((rows + cols) / 2, rel=1e-6)
    assert vsc(t2v, v2t, torch.tensor([1, 2])).item() != pytest.approx(got.item())


def test_psl_is_the_mean_binary_cross_entropy_over_every_concept():
    logits = torch.tensor([[2.0, -1.0, 0.0], [0.5, 3.0, -2.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])

    def bce(z, y):   # -log sigmoid(z) for y = 1, -log(1 - sigmoid(z)) for y = 0
        return math.log1p(math.exp(-z)) if y else math.log1p(math.exp(z))
    expected = sum(bce(z, y) for zr, yr in zip(logits.tolist(), targets.tolist())
                   for z, y in zip(zr, yr)) / 6
    assert psl(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_mamo_regresses_the_unmasked_states_without_moving_them():
    predicted = torch.tensor([[1.0, 2.0], [0.0, -1.0]], requires_grad=True)
    target = torch.tensor([[0.5, 2.0], [1.0, 1.0]], requires_grad=True)
    loss = mamo(predicted, target)
    assert loss.item() == pytest.approx((0.25 + 0 + 1 + 4) / 4)
    loss.backward()
    assert target.grad is None and predicted.grad.abs().sum() > 0   # the target is a teacher
    empty = torch.zeros(0, 2, requires_grad=True)
    assert mamo(empty, empty).item() == 0.0


def test_mamo_explicit_names_the_label_of_labelled_masked_regions():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0], [9.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, IGNORE])   # the third region has no label: no target

    def ce(row, y):
        return math.log(sum(math.exp(z) for z in row)) - row[y]
    expected = (ce([2.0, 0.0, -1.0], 0) + ce([0.5, 0.5, 3.0], 1)) / 2
    assert mamo_explicit(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    assert mamo_explicit(logits[2:], labels[2:]).item() == 0.0


def test_xmm_is_the_mean_of_word_and_region_reconstruction():
    word_logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    word_labels = torch.tensor([0, 2])
    words = ((-2 + lse(2, 0, -1)) + (-3 + lse(0.5, 0.5, 3))) / 2
    predicted = torch.tensor([[1.0, 2.0], [0.0, -1.0]], requires_grad=True)
    target = torch.tensor([[0.5, 2.0], [1.0, 1.0]], requires_grad=True)
    regions = (0.25 + 0 + 1 + 4) / 4
    loss = xmm(word_logits, word_labels, predicted, target)
    assert loss.item() == pytest.approx((words + regions) / 2, rel=1e-6)
    loss.backward()
    assert target.grad is None   # the regions' own embeddings are the target, not moved by it


def test_mcr_masked_positions_only():
    logits = torch.tensor([[[1.0, 2.0, 3.0], [5.0, 0.0, 0.0], [3.0, 1.0, 0.0]]], requires_grad=True)
    labels = torch.tensor([[2, -100, 1]])
    expected = ((-3 + lse(1, 2, 3)) + (-1 + lse(3, 1, 0))) / 2
    loss = mcr(logits, labels)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert logits.grad[0, 1].abs().sum() == 0  # unmasked position gets no gradient


def test_mcr_nothing_masked_is_zero_with_grad_path():
    logits = torch.randn(2, 4, 5, requires_grad=True)
    loss = mcr(logits, torch.full((2, 4), -100))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_mlm_positive_rows_only():
    logits = torch.tensor([[[0.0, 1.0], [2.0, 0.0]], [[9.0, -9.0], [9.0, -9.0]]])
    labels = torch.tensor([[1, 0], [1, 1]])  # row 1 would cost ~18 per token if counted
    expected = ((-1 + lse(0, 1)) + (-2 + lse(2, 0))) / 2
    assert mlm(logits, labels, torch.tensor([True, False])).item() == pytest.approx(expected, rel=1e-6)
    all_rows = (2 * expected + 2 * (9 + lse(9, -9))) / 4
    assert mlm(logits, labels).item() == pytest.approx(all_rows, rel=1e-6)
    assert mlm(logits, labels, torch.tensor([False, False])).item() == 0.0


# rows = texts, columns = images; off-diagonal maxima picked by hand below
SIM = torch.tensor([[9.0, 1.0, 5.0, 2.0],
                    [3.0, 9.0, 0.0, 4.0],
                    [1.0, 7.0, 9.0, 6.0],
                    [8.0, 2.0, 0.0, 9.0]])


def test_itm_negatives_hardest_fixed_split():
    # no generator: texts 0, 1 take their hardest image (0 -> 2, 1 -> 3);
    # images 2, 3 take their hardest text (column 2: text 0; column 3: text 2)
    t, i, y = itm_negatives(SIM)
    assert t.tolist() == [0, 1, 2, 3, 0, 1, 0, 2]
    assert i.tolist() == [0, 1, 2, 3, 2, 3, 2, 3]
    assert y.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]


def test_itm_negatives_same_image_is_not_a_negative():
    # pairs 0 and 1 show the same image: text 0's hardest is no longer image 1 -> still 2;
    # text 1 without image 0 -> 3; image 0's hardest text is 3 (8), image 1's is 2 (7)
    sim = SIM.clone()
    sim[0, 1] = 100.0  # would be the hardest for text 0 without image_ids
    sim[1, 0] = 100.0
    t, i, _ = itm_negatives(sim, image_ids=torch.tensor([7, 7, 8, 9]))
    assert list(zip(t[4:].tolist(), i[4:].tolist())) == [(0, 2), (1, 3), (0, 2), (2, 3)]
    with pytest.raises(ValueError):
        itm_negatives(torch.zeros(2, 2), image_ids=torch.tensor([1, 1]))
    with pytest.raises(ValueError):
        itm_negatives(torch.zeros(1, 1))


def test_itm_negatives_identical_captions_are_not_negatives():
    # captions 0 and 2 read the same: text 0's hardest image 2 (9) is excluded -> image 3 (4);
    # image 2's hardest text 0 (5) is excluded -> texts 1 and 3 tie at 0, argmax takes 1.
    t, i, _ = itm_negatives(SIM, text_ids=torch.tensor([5, 6, 5, 7]))
    assert list(zip(t[4:].tolist(), i[4:].tolist())) == [(0, 3), (1, 3), (1, 2), (2, 3)]
    # a row left with no partner keeps the image-only exclusion instead of failing
    t, i, _ = itm_negatives(SIM[:2, :2], text_ids=torch.tensor([1, 1]))
    assert list(zip(t[2:].tolist(), i[2:].tolist())) == [(0, 1), (0, 1)]


def test_itm_negatives_known_matches_are_not_negatives_one_way_only():
    # text 0 is known true of image 2: text 0 falls back to image 3 (2 over 1), and image 2's
    # hardest text 0 (5) is excluded -> texts 1 and 3 tie at 0, argmax takes 1
    known = torch.zeros(4, 4, dtype=torch.bool)
    known[0, 2] = True
    t, i, _ = itm_negatives(SIM, matches=known)
    assert list(zip(t[4:].tolist(), i[4:].tolist())) == [(0, 3), (1, 3), (1, 2), (2, 3)]
    # drawn modes: text 0 never meets image 1, while text 1 still meets image 0
    known = torch.zeros(4, 4, dtype=torch.bool)
    known[0, 1] = True
    for mode in ("random", "sampled"):
        pairs = set()
        for seed in range(60):
            t, i, y = itm_negatives(SIM, torch.Generator().manual_seed(seed), mode=mode,
                                    matches=known)
            pairs |= set(zip(t[y == 0].tolist(), i[y == 0].tolist()))
        assert (0, 1) not in pairs and (1, 0) in pairs, mode


def test_itm_negatives_random_split_half_each_way():
    hard_image = {0: 2, 1: 3, 2: 1, 3: 0}
    hard_text = {0: 3, 1: 2, 2: 0, 3: 2}
    seen_splits = set()
    for seed in range(20):
        t, i, y = itm_negatives(SIM, torch.Generator().manual_seed(seed))
        t2, i2, _ = itm_negatives(SIM, torch.Generator().manual_seed(seed))
        assert torch.equal(t, t2) and torch.equal(i, i2)
        neg = list(zip(t[4:].tolist(), i[4:].tolist()))
        text_side, image_side = neg[:2], neg[2:]
        assert all(hard_image[a] == b for a, b in text_side)
        assert all(hard_text[b] == a for a, b in image_side)
        # every batch row goes exactly one way
        assert sorted([a for a, _ in text_side] + [b for _, b in image_side]) == [0, 1, 2, 3]
        seen_splits.add(tuple(sorted(a for a, _ in text_side)))
    assert len(seen_splits) > 1
    t, _, _ = itm_negatives(torch.randn(5, 5), torch.Generator().manual_seed(0))
    assert len(t) == 10  # odd batch: 2 text-side + 3 image-side negatives


def test_itm_two_way_ce():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    expected = (lse(2, 0) + (-1 + lse(0, 1)) + math.log(2)) / 3
    assert itm(logits, torch.tensor([1, 1, 0])).item() == pytest.approx(expected, rel=1e-6)


# WPG: 2-d vectors whose cosines are known by hand.
# T0 phrases (1,0), (0,1); T1 phrase (1,1); T2 no phrase.
# I0 regions (1,0), (1,1), padding (0,1); I1 (0,1), (-1,0), (-1,-1); I2 (1,0), padding x2.
PHRASES = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [5.0, 5.0]], [[3.0, 1.0], [0.0, 2.0]]])
PHRASE_MASK = torch.tensor([[True, True], [True, False], [False, False]])
REGIONS = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]],
                        [[0.0, 1.0], [-1.0, 0.0], [-1.0, -1.0]],
                        [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
REGION_MASK = torch.tensor([[True, True, False], [True, True, True], [True, False, False]])
# best-region (top-1) scores S[t][i] by hand; the padding (0,1) of I0 would give T0's (0,1) cos 1
S = [[(1 + R2) / 2, (0 + 1) / 2, (1 + 0) / 2],
     [1.0, R2, R2]]


def test_wpg_top1_two_images_hand_value():
    out = wpg(PHRASES[:2], PHRASE_MASK[:2], REGIONS[:2], REGION_MASK[:2], top_k=1)
    assert out.negative_image.tolist() == [1, 0]  # the only other image
    assert out.positive_score.tolist() == pytest.approx([S[0][0], S[1][1]], abs=1e-6)
    assert out.negative_score.tolist() == pytest.approx([S[0][1], S[1][0]], abs=1e-6)
    hinge0 = max(0.0, 0.2 + S[0][1] - S[0][0])  # 0: grounded well enough
    hinge1 = max(0.0, 0.2 + S[1][0] - S[1][1])  # 0.4929
    assert hinge0 == 0.0 and hinge1 > 0.4
    assert out.loss.item() == pytest.approx((hinge0 + hinge1) / 2, abs=1e-6)


def test_wpg_text_without_phrases_left_out_and_negatives_uniform():
    counts = [0, 0, 0]
    for seed in range(300):
        out = wpg(PHRASES, PHRASE_MASK, REGIONS, REGION_MASK, torch.Generator().manual_seed(seed),
                  top_k=1)
        neg = out.negative_image.tolist()
        assert all(n != b for b, n in enumerate(neg))
        assert out.counted.tolist() == [True, True, False]
        expected = sum(max(0.0, 0.2 + S[t][neg[t]] - S[t][t]) for t in (0, 1)) / 2
        assert out.loss.item() == pytest.approx(expected, abs=1e-6)
        counts[neg[0]] += 1
    assert counts[0] == 0 and abs(counts[1] - 150) < 40  # uniform over the other two images


def _angle(c):  # unit 2-d vector with cosine c to (1, 0)
    return [c, math.sqrt(1 - c * c)]


def _pick_distribution(region_cosines, mask, seeds=300, top_k=3):
    phrases = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])
    regions = torch.tensor([[_angle(c) for c in region_cosines]] * 2)
    masks = torch.tensor([mask, mask])
    seen = {}
    for seed in range(seeds):
        out = wpg(phrases, torch.ones(2, 1, dtype=torch.bool), regions, masks,
                  torch.Generator().manual_seed(seed), top_k=top_k)
        score = round(out.positive_score[0].item(), 4)
        seen[score] = seen.get(score, 0) + 1
    return seen


def test_wpg_draws_among_top3_never_padding():
    # valid cosines 1, .8, .6, .4, -1; padding .99 would rank second if it were not masked
    seen = _pick_distribution([1.0, 0.4, 0.99, 0.8, -1.0, 0.6], [True, True, False, True, True, True])
    assert set(seen) == {1.0, 0.8, 0.6}
    assert all(60 < n < 140 for n in seen.values())  # ~100 each of 300


def test_wpg_fewer_regions_than_top_k():
    seen = _pick_distribution([0.9, 0.5, 0.95, -0.5], [False, True, False, True])
    assert set(seen) == {0.5, -0.5}


def test_wpg_gradients_and_empty_batch():
    phrases = PHRASES.clone().requires_grad_()
    regions = REGIONS.clone().requires_grad_()
    out = wpg(phrases, PHRASE_MASK, regions, REGION_MASK, torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(phrases.grad).all() and torch.isfinite(regions.grad).all()
    assert phrases.grad[2].abs().sum() == 0  # the phrase-less text takes no part

    phrases = PHRASES.clone().requires_grad_()
    out = wpg(phrases, torch.zeros(3, 2, dtype=torch.bool), REGIONS, REGION_MASK)
    assert out.loss.item() == 0.0 and not out.counted.any()
    out.loss.backward()
    assert torch.equal(phrases.grad, torch.zeros_like(phrases))
