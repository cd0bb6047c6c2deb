"""The tiny model, the losses and the masking rules work together: 8 image-text pairs are fitted
to VSC accuracy 1.0, ITM separates the true pairs from the false ones by wide margins, and MLM
recovers masked words of a memorised caption. The step at which ITM leaves ln 2 depends on the
summation order (threads, kernels): 600 steps is ~3x the latest seen (185)."""
import pytest
import torch

from model.batch import VisualInputs
from model.config import load_config
from model.losses import itm, itm_negatives, mlm, vsc
from model.masking import mask_tokens
from model.mvp import MVP, param_groups

pytestmark = pytest.mark.slow  # long training or subprocesses: not in make test-fast


def _pairs(cfg, n=8, text_len=10, tags=6, regions=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (n, text_len), generator=g)
    ids[:, 0], ids[:, -1] = cfg.cls_id, cfg.sep_id
    tag_ids = torch.randint(2000, 3000, (n, tags), generator=g)
    tag_ids[:, 0], tag_ids[:, -1] = cfg.cls_id, cfg.sep_id
    feats = torch.randn(n, regions, cfg.feat_dim, generator=g)
    geom = torch.rand(n, regions, 6, generator=g)
    ones = lambda t: torch.ones_like(t, dtype=torch.bool)  # noqa: E731
    visual = VisualInputs(tag_ids, ones(tag_ids), feats, geom, torch.ones(n, regions, dtype=torch.bool))
    return ids, ones(ids), visual


def test_tiny_model_fits_eight_pairs_vsc_itm_and_mlm():
    torch.manual_seed(0)
    cfg = load_config("tiny")
    model = MVP(cfg)
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-3)
    ids, mask, visual = _pairs(cfg)
    special = (ids == cfg.cls_id) | (ids == cfg.sep_id)
    gen = torch.Generator().manual_seed(1)
    for _ in range(600):
        masked, labels = mask_tokens(ids, special, (1000, 2000), gen, prob=0.3,
                                     mask_id=cfg.mask_id)
        t = model.encode_text(ids, mask)
        v = model.encode_visual(visual)
        sim = model.similarity(t.g, v.g)
        # sampled (ALBEF's): the hardest alone would leave 48 of the 56 false pairs unseen
        ti, vi, y = itm_negatives(sim.detach(), gen, mode="sampled")
        fused = model.fuse(t.take(ti), v.take(vi))
        # MLM reads the fused output of the masked caption with its own image (positives only)
        fused_masked = model.fuse(model.encode_text(masked, mask), v)
        loss = (vsc(sim) + itm(model.itm_logits(fused), y)
                + mlm(model.mlm_logits(fused_masked.text_hidden), labels))
        opt.zero_grad()
        loss.backward()
        opt.step()

    model.eval()
    with torch.no_grad():
        t = model.encode_text(ids, mask)
        v = model.encode_visual(visual)
        sim = model.similarity(t.g, v.g)
        diag = torch.arange(8)
        assert (sim.argmax(1) == diag).all() and (sim.argmax(0) == diag).all()  # VSC acc 1.0
        texts, images = torch.arange(8).repeat_interleave(8), torch.arange(8).repeat(8)
        p_match = model.itm_logits(model.fuse(t.take(texts), v.take(images))).softmax(1)
        p_match = p_match[:, 1].reshape(8, 8)            # [text, image]
        true = torch.eye(8, dtype=torch.bool)
        hardest = torch.zeros_like(true)                 # each text's and image's most similar
        hardest[diag, sim.masked_fill(true, -1e9).argmax(1)] = True
        hardest[sim.masked_fill(true, -1e9).argmax(0), diag] = True
        # margins, not exact accuracies: a memorised lookup of 8 random pairs may leave one pair
        # near 0.5 on one CPU and not on another
        assert p_match[true].mean() > 0.8, p_match
        assert p_match[hardest].mean() < 0.2, p_match
        assert p_match[true].mean() - p_match[~true].mean() > 0.5, p_match
        masked, labels = mask_tokens(ids, special, (1000, 2000), torch.Generator().manual_seed(3),
                                     prob=0.3, mask_id=cfg.mask_id)
        logits = model.mlm_logits(model.fuse(model.encode_text(masked, mask), v).text_hidden)
        target = labels != -100
        accuracy = (logits.argmax(-1)[target] == labels[target]).float().mean().item()
        assert target.sum() > 5 and accuracy > 0.9, accuracy
