"""Masking rules: 15% selected, 80/10/10, specials and padding never, seeded determinism, and the
no-leakage rule between caption tokens and phrase concepts."""
import torch

from model.masking import mask_regions, mask_tags, mask_tokens, mask_with_concepts

MASK = 49408
WORDS = (0, 49406)          # BPE words without sot/eot
CONCEPTS = (49410, 49510)   # 100 concepts after [MASK], [PAD]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def _batch(b=200, length=500):
    ids = torch.randint(*WORDS, (b, length), generator=gen(1234))
    special = torch.zeros(b, length, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True         # [CLS], [SEP]
    special[: b // 2, length // 2:] = True        # half the rows padded to half length
    return ids, special


def _check_rates(ids, special, out, labels, random_range):
    selected = labels != -100
    maskable = ~special
    assert not (selected & special).any()
    assert torch.equal(out[special], ids[special])
    assert torch.equal(labels[selected], ids[selected])
    assert abs(selected.sum().item() / maskable.sum().item() - 0.15) < 0.005
    n = selected.sum().item()
    to_mask = (out == MASK) & selected
    kept = (out == ids) & selected
    to_random = selected & ~to_mask & ~kept
    assert abs(to_mask.sum().item() / n - 0.8) < 0.015
    assert abs(kept.sum().item() / n - 0.1) < 0.01  # a random draw equal to the original is rare
    assert abs(to_random.sum().item() / n - 0.1) < 0.01
    lo, hi = random_range
    assert ((out[to_random] >= lo) & (out[to_random] < hi)).all()
    assert torch.equal(out[~selected], ids[~selected])


def test_mask_tokens_rates_and_specials():
    ids, special = _batch()
    out, labels = mask_tokens(ids, special, WORDS, gen(0), mask_id=MASK)
    _check_rates(ids, special, out, labels, WORDS)


def test_mask_tokens_deterministic_per_seed():
    ids, special = _batch(8, 64)
    a = mask_tokens(ids, special, WORDS, gen(3), mask_id=MASK)
    b = mask_tokens(ids, special, WORDS, gen(3), mask_id=MASK)
    c = mask_tokens(ids, special, WORDS, gen(4), mask_id=MASK)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_mask_tags_never_padding():
    tags = torch.randint(*WORDS, (400, 250), generator=gen(9))
    tag_mask = torch.ones(400, 250, dtype=torch.bool)
    tag_mask[:, 0] = tag_mask[:, 1] = False  # [CLS], [SEP]
    tag_mask[::3, 100:] = False              # padding
    out, labels = mask_tags(tags, tag_mask, WORDS, gen(5), mask_id=MASK)
    _check_rates(tags, ~tag_mask, out, labels, WORDS)


def _caption_batch(b, seed):
    """Captions of 20 positions ([CLS] 18 words [SEP]) with 4 concept slots, the last one padding:
    spans [1,3), [2,6) (overlapping), [9,10), and an unlocated concept [0,0)."""
    g = gen(seed)
    ids = torch.randint(*WORDS, (b, 20), generator=g)
    special = torch.zeros(b, 20, dtype=torch.bool)
    special[:, 0] = special[:, 19] = True
    concepts = torch.randint(*CONCEPTS, (b, 5), generator=g)
    spans = torch.tensor([[1, 3], [2, 6], [9, 10], [0, 0], [0, 0]]).expand(b, 5, 2)
    concept_mask = torch.tensor([True, True, True, True, False]).expand(b, 5)
    return ids, special, concepts, spans, concept_mask


def _mask_caption(batch, seed):
    ids, special, concepts, spans, concept_mask = batch
    return mask_with_concepts(ids, special, concepts, spans, MASK, WORDS, CONCEPTS, gen(seed),
                              concept_mask=concept_mask)


def _forced(labels, spans):
    """[B, C] True where a token of concept c's span was selected for MLM."""
    tok_sel = labels != -100
    return torch.stack([tok_sel[:, s:e].any(1) for s, e in spans[0].tolist()], dim=1)


def test_concept_masked_whenever_a_token_of_its_span_is():
    batch = _caption_batch(64, 0)
    _, special, concepts, spans, _ = batch
    unforced_selected = unforced_total = n_forced = 0
    for seed in range(50):
        _, labels, c_out, c_labels = _mask_caption(batch, seed)
        tok_sel = labels != -100
        con_sel = c_labels != -100
        forced_all = _forced(labels, spans)
        for c, (start, end) in enumerate(spans[0].tolist()[:4]):
            forced = forced_all[:, c]
            assert con_sel[forced, c].all(), f"leak: concept {c}, seed {seed}"
            # never kept or randomised: either would reveal the masked word
            assert (c_out[forced, c] == MASK).all(), f"leak: concept {c}, seed {seed}"
            n_forced += forced.sum().item()
            unforced_selected += con_sel[~forced, c].sum().item()
            unforced_total += (~forced).sum().item()
        assert not con_sel[:, 4].any()  # padding concept
        assert torch.equal(c_labels[con_sel], concepts[con_sel])
        assert not tok_sel[special].any()
    # concepts with no masked token are masked on their own at ~15%
    assert abs(unforced_selected / unforced_total - 0.15) < 0.02
    assert n_forced > 500   # the leak check above saw many forced concepts


def test_concept_corruption_split_and_range():
    batch = _caption_batch(4000, 1)
    ids, _, concepts, _, _ = batch
    out, labels, c_out, c_labels = _mask_caption(batch, 7)
    sel = (c_labels != -100) & ~_forced(labels, batch[3])   # forced ones are always [MASK]
    n = sel.sum().item()
    to_mask = (c_out == MASK) & sel
    kept = (c_out == concepts) & sel
    to_random = sel & ~to_mask & ~kept
    assert abs(to_mask.sum().item() / n - 0.8) < 0.03
    assert abs(to_random.sum().item() / n - 0.1) < 0.02
    assert ((c_out[to_random] >= CONCEPTS[0]) & (c_out[to_random] < CONCEPTS[1])).all()
    word_random = (labels != -100) & (out != MASK) & (out != ids)
    assert (out[word_random] < WORDS[1]).all()  # word tokens never replaced by concepts
    a = _mask_caption(batch, 7)
    assert all(torch.equal(x, y) for x, y in zip(a, (out, labels, c_out, c_labels)))


def test_region_masking_zeroes_a_share_of_the_real_regions_only():
    regions = torch.ones(64, 50, 3)
    real = torch.arange(50)[None] < torch.randint(1, 51, (64, 1), generator=torch.Generator()
                                                  .manual_seed(0))
    masked, chosen = mask_regions(regions, real, torch.Generator().manual_seed(1), prob=0.3)
    assert not chosen[~real].any()                      # padding is never chosen
    assert (masked[chosen] == 0).all() and (masked[~chosen] == 1).all()
    assert abs(chosen.sum().item() / real.sum().item() - 0.3) < 0.03
