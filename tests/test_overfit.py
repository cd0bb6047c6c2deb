"""The tiny model, the losses and the masking rules work together: 8 image-text pairs are fitted
to VSC and ITM accuracy 1.0 in seconds, and MLM recovers masked words of a memorised caption."""
import torch

from model.config import load_config
from model.losses import itm, itm_negatives, mlm, vsc
from model.masking import mask_tokens
from model.mvp import MVP, param_groups


def _pairs(cfg, n=8, text_len=10, tags=6, regions=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (n, text_len), generator=g)
    ids[:, 0], ids[:, -1] = cfg.cls_id, cfg.sep_id
    tag_ids = torch.randint(2000, 3000, (n, tags), generator=g)
    tag_ids[:, 0], tag_ids[:, -1] = cfg.cls_id, cfg.sep_id
    feats = torch.randn(n, regions, cfg.feat_dim, generator=g)
    geom = torch.rand(n, regions, 6, generator=g)
    ones = lambda t: torch.ones_like(t, dtype=torch.bool)  # noqa: E731
    return ids, ones(ids), tag_ids, ones(tag_ids), feats, geom, torch.ones(n, regions,
                                                                          dtype=torch.bool)


def test_tiny_model_fits_eight_pairs_vsc_itm_and_mlm():
    torch.manual_seed(0)
    cfg = load_config("tiny")
    model = MVP(cfg)
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-3)
    ids, mask, tag_ids, tag_mask, feats, geom, region_mask = _pairs(cfg)
    special = (ids == cfg.cls_id) | (ids == cfg.sep_id)
    gen = torch.Generator().manual_seed(1)
    for _ in range(600):
        masked, labels = mask_tokens(ids, special, (1000, 2000), gen, prob=0.3,
                                     mask_id=cfg.mask_id)
        t = model.encode_text(ids, mask)
        v = model.encode_visual(tag_ids, tag_mask, feats, geom, region_mask)
        sim = model.similarity(t.g, v.g)
        ti, vi, y = itm_negatives(sim.detach(), gen)
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
        v = model.encode_visual(tag_ids, tag_mask, feats, geom, region_mask)
        sim = model.similarity(t.g, v.g)
        diag = torch.arange(8)
        assert (sim.argmax(1) == diag).all() and (sim.argmax(0) == diag).all()  # VSC acc 1.0
        ti, vi, y = itm_negatives(sim, torch.Generator().manual_seed(2))
        pred = model.itm_logits(model.fuse(t.take(ti), v.take(vi))).argmax(1)
        assert (pred == y).all()  # ITM accuracy 1.0 on positives and hardest negatives
        masked, labels = mask_tokens(ids, special, (1000, 2000), torch.Generator().manual_seed(3),
                                     prob=0.3, mask_id=cfg.mask_id)
        logits = model.mlm_logits(model.fuse(model.encode_text(masked, mask), v).text_hidden)
        target = labels != -100
        accuracy = (logits.argmax(-1)[target] == labels[target]).float().mean().item()
        assert target.sum() > 5 and accuracy > 0.9, accuracy
