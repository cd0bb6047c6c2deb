"""The MVP model with the tiny config: shapes, padding masks, tied MLM weights, stage separation,
parameter count of the paper's size, config loading."""
import dataclasses
from pathlib import Path

import pytest
import torch

from model.batch import VisualInputs, assemble_text, pad_rows
from model.config import ConfigError, ModelConfig, load_config
from model.mvp import MVP, param_groups

B, LT, LG, R = 3, 12, 7, 5


@pytest.fixture(scope="module")
def cfg():
    return load_config("tiny")


@pytest.fixture(scope="module")
def model(cfg):
    torch.manual_seed(0)
    return MVP(cfg).eval()


def make_batch(cfg, b=B, lt=LT, lg=LG, r=R, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 49000, (b, lt), generator=g)
    ids[:, 0] = cfg.cls_id
    ids[:, -3:-1] = cfg.concept_offset + torch.randint(0, cfg.n_concepts, (b, 2), generator=g)
    ids[:, -1] = cfg.sep_id
    mask = torch.ones(b, lt, dtype=torch.bool)
    tag_ids = torch.randint(0, 49000, (b, lg), generator=g)
    tag_ids[:, 0], tag_ids[:, -1] = cfg.cls_id, cfg.sep_id
    tag_mask = torch.ones(b, lg, dtype=torch.bool)
    regions = torch.randn(b, r, cfg.feat_dim, generator=g)
    geometry = torch.rand(b, r, 6, generator=g)
    region_mask = torch.ones(b, r, dtype=torch.bool)
    # row 1 is padded on every stream: the last 4 text, 2 tag and 2 region positions
    ids[1, -4:], mask[1, -4:] = cfg.pad_id, False
    tag_ids[1, -2:], tag_mask[1, -2:] = cfg.pad_id, False
    region_mask[1, -2:] = False
    return dict(ids=ids, mask=mask,
                visual=VisualInputs(tag_ids, tag_mask, regions, geometry, region_mask))


def run(model, b):
    t = model.encode_text(b["ids"], b["mask"])
    v = model.encode_visual(b["visual"])
    return t, v, model.fuse(t, v)


def test_vocabulary_layout(cfg):
    assert (cfg.mask_id, cfg.pad_id, cfg.concept_offset) == (49408, 49409, 49410)
    assert cfg.vocab_size == 49410 + 64


def test_output_shapes(model, cfg):
    t, v, f = run(model, make_batch(cfg))
    H, E = cfg.hidden, cfg.embed_dim
    assert t.hidden.shape == (B, LT, H) and t.g.shape == (B, E)
    assert v.hidden.shape == (B, LG + R, H) and v.g.shape == (B, E)
    assert v.tag_hidden.shape == (B, LG, H) and v.region_hidden.shape == (B, R, H)
    # tags and the visual [CLS] are dropped before fusion
    assert f.hidden.shape == (B, LT + R, H) and f.mask.shape == (B, LT + R)
    assert f.text_hidden.shape == (B, LT, H) and f.region_hidden.shape == (B, R, H)
    assert torch.allclose(t.g.norm(dim=-1), torch.ones(B))
    assert torch.allclose(v.g.norm(dim=-1), torch.ones(B))
    assert model.mlm_logits(f.text_hidden).shape == (B, LT, cfg.word_vocab)
    n_tags = int(v.tag_mask.sum())
    assert model.mcr_logits(v.tag_hidden[v.tag_mask]).shape == (n_tags, cfg.word_vocab)
    assert model.itm_logits(f).shape == (B, 2)
    sim = model.similarity(t.g, v.take(torch.tensor([0, 1])).g)
    assert sim.shape == (B, 2)
    # initial scale 1/0.07: the diagonal of g_t @ g_t.T is exactly 1/0.07
    assert torch.allclose(model.similarity(t.g, t.g).diagonal(), torch.full((B,), 1 / 0.07))
    assert model.temperature == pytest.approx(0.07)


def test_padding_masks_really_mask(model, cfg):
    b = make_batch(cfg)
    t0, v0, f0 = run(model, b)
    c = {"ids": b["ids"].clone(), "mask": b["mask"].clone(),
         "visual": b["visual"].take(torch.arange(B))}  # indexing copies every field
    cv = c["visual"]
    c["ids"][1, -4:] = 123                       # change padded inputs only
    cv.tag_ids[1, -2:] = 456
    cv.regions[1, -2:] += 10.0
    cv.geometry[1, -2:] = 0.5
    t1, v1, f1 = run(model, c)
    bv = b["visual"]
    real_t, real_v = b["mask"], torch.cat([bv.tag_mask, bv.region_mask], 1)
    real_f = torch.cat([b["mask"], bv.region_mask], 1)
    assert torch.allclose(t0.hidden[real_t], t1.hidden[real_t], atol=1e-6)
    assert torch.allclose(v0.hidden[real_v], v1.hidden[real_v], atol=1e-6)
    assert torch.allclose(f0.hidden[real_f], f1.hidden[real_f], atol=1e-6)
    assert torch.allclose(f0.pooled, f1.pooled, atol=1e-6)
    # and the same edits on real positions do change the outputs (the test can fail)
    c["mask"][1, -4:] = True
    cv.region_mask[1, -2:] = True
    t2, v2, f2 = run(model, c)
    assert not torch.allclose(t0.g[1], t2.g[1], atol=1e-4)
    assert not torch.allclose(f0.pooled[1], f2.pooled[1], atol=1e-4)
    # rows without padding are untouched by another row's edits
    assert torch.allclose(f0.pooled[[0, 2]], f2.pooled[[0, 2]], atol=1e-6)


def test_mlm_head_is_tied_to_word_rows(model, cfg):
    w = model.word_embeddings
    assert w.data_ptr() == model.embed.weight.data_ptr() and w.shape == (cfg.word_vocab, cfg.hidden)
    assert not any(p.shape == (cfg.word_vocab, cfg.hidden) for n, p in model.named_parameters()
                   if n != "embed.weight")
    model.zero_grad()
    model.mlm_logits(torch.randn(4, cfg.hidden)).sum().backward()
    grad = model.embed.weight.grad
    assert grad[: cfg.word_vocab].abs().sum() > 0
    assert grad[cfg.word_vocab:].abs().sum() == 0  # specials and concepts are never predicted
    model.zero_grad()


def test_mcr_has_its_own_head_over_the_shared_decoder(model, cfg):
    """MCR and MLM share the decoder (the word rows) but not the transform or the bias, as the
    authors' `half_mlm`: a step on MCR alone leaves the MLM transform and bias untouched."""
    assert model.mcr_transform[0].weight.data_ptr() != model.mlm_transform[0].weight.data_ptr()
    model.zero_grad()
    model.mcr_logits(torch.randn(4, cfg.hidden)).sum().backward()
    assert model.mcr_transform[0].weight.grad.abs().sum() > 0
    assert model.mcr_bias.grad.abs().sum() > 0
    assert model.embed.weight.grad[: cfg.word_vocab].abs().sum() > 0   # the tied decoder
    assert model.mlm_transform[0].weight.grad is None and model.mlm_bias.grad is None
    h = torch.randn(3, cfg.hidden)
    assert not torch.allclose(model.mcr_logits(h), model.mlm_logits(h))
    model.zero_grad(set_to_none=True)


def test_fusion_attention_starts_selective(cfg):
    """Query/key projections of the cross encoder start at std 1/sqrt(H), so attention logits are
    O(1) at step 0 (at the 0.02 of the other layers they are ~0 and attention is uniform)."""
    torch.manual_seed(0)
    model = MVP(cfg)
    H = cfg.hidden
    for block in model.cross_encoder.blocks:
        qk = block.attn.qkv.weight[: 2 * H]
        assert abs(qk.std().item() - H ** -0.5) < 0.2 * H ** -0.5
        assert abs(block.attn.qkv.weight[2 * H:].std().item() - 0.02) < 0.005   # values as before
    assert abs(model.text_encoder.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.005


def test_stage1_does_not_touch_cross_encoder(cfg):
    model = MVP(cfg)
    b = make_batch(cfg)
    t = model.encode_text(b["ids"], b["mask"])
    v = model.encode_visual(b["visual"])
    loss = model.similarity(t.g, v.g).logsumexp(1).mean() + model.mcr_logits(v.tag_hidden).mean()
    loss.backward()
    stage2_only = ("cross_encoder.", "pooler.", "itm_head.")
    for name, p in model.named_parameters():
        if name.startswith(stage2_only):
            assert p.grad is None, name
    assert model.text_encoder.blocks[0].attn.qkv.weight.grad is not None
    assert model.region_embed.weight.grad is not None and model.logit_scale.grad is not None


def test_base_is_the_papers_size():
    cfg = load_config("base")
    with torch.device("meta"):  # no memory: shapes only
        m = MVP(cfg)
    n = sum(p.numel() for p in m.parameters())
    table = cfg.vocab_size * cfg.hidden
    assert cfg.vocab_size == 86000 and table == 66_048_000
    assert 190e6 < n < 200e6, n  # paper: ~197M incl. the 86k x 768 table


def test_param_groups(model):
    decay, no_decay = param_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    ids = lambda g: {id(p) for p in g["params"]}  # noqa: E731
    assert ids(decay).isdisjoint(ids(no_decay))
    assert len(ids(decay)) + len(ids(no_decay)) == len(list(model.parameters()))
    for p in (model.embed.weight, model.text_pos.weight, model.logit_scale, model.mlm_bias,
              model.text_ln.weight, model.itm_head.bias):
        assert id(p) in ids(no_decay)
    for p in (model.text_encoder.blocks[0].attn.qkv.weight, model.region_embed.weight,
              model.itm_head.weight, model.text_proj.weight):
        assert id(p) in ids(decay)


def test_full_size_batch_backpropagates_everywhere(cfg):
    # (speed targets live in benchmarks/, not in timed tests)
    torch.manual_seed(0)
    model = MVP(cfg)
    b = make_batch(cfg, b=8, lt=cfg.max_text_len, lg=cfg.max_tags, r=cfg.max_regions)
    t, v, f = run(model, b)
    loss = (model.similarity(t.g, v.g).mean() + model.itm_logits(f).mean()
            + model.mlm_logits(f.text_hidden[:, 1:7]).mean())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in model.text_encoder.parameters())
    assert all(p.grad is not None for p in model.cross_encoder.parameters())


def test_input_checks(model, cfg):
    b = make_batch(cfg)
    with pytest.raises(ValueError, match="max_text_len"):
        model.encode_text(torch.zeros(1, cfg.max_text_len + 1, dtype=torch.long),
                          torch.ones(1, cfg.max_text_len + 1))
    with pytest.raises(ValueError, match="regions"):
        narrow = b["visual"].regions[..., :-1]
        model.encode_visual(dataclasses.replace(b["visual"], regions=narrow))


def test_a_batch_wider_than_max_text_len_is_fine_when_each_row_fits(model, cfg):
    """A caption of many words batched with one of many concepts pads wider than max_text_len
    (assemble_text lines concepts up after the longest caption); each row still fits."""
    L = cfg.max_text_len
    long_words = torch.randint(1000, 2000, (1, L - 2))
    long_words[0, 0] = cfg.cls_id
    words, word_mask = pad_rows([long_words[0], long_words[0, :5]], cfg.pad_id)
    concepts, concept_mask = pad_rows([torch.zeros(0, dtype=torch.long),
                                       torch.full((5,), cfg.concept_offset)], cfg.pad_id)
    ids, mask, _ = assemble_text(words, word_mask, concepts, concept_mask, cfg.sep_id, cfg.pad_id)
    assert ids.shape[1] > L and int(mask.sum(1).max()) <= L
    model.eval()
    with torch.no_grad():
        wide = model.encode_text(ids, mask)
        for row in range(2):   # each row reads as it does alone
            one = assemble_text(words[row:row + 1, :int(word_mask[row].sum())],
                                word_mask[row:row + 1, :int(word_mask[row].sum())],
                                concepts[row:row + 1, :int(concept_mask[row].sum())],
                                concept_mask[row:row + 1, :int(concept_mask[row].sum())],
                                cfg.sep_id, cfg.pad_id)
            alone = model.encode_text(one[0], one[1])
            assert torch.allclose(wide.g[row], alone.g[0], atol=1e-5)


def test_load_config_presets_and_overrides(tmp_path: Path):
    assert load_config("small").hidden == 256
    base = load_config("base")
    layers = (base.text_layers, base.visual_layers, base.cross_layers)
    assert (base.hidden, base.heads, layers) == (768, 12, (6, 6, 6))
    c = load_config("tiny", n_concepts=5, feature_set="fs1")
    assert c.n_concepts == 5 and c.feature_set == "fs1" and c.vocab_size == 49415
    # a whole-experiment file: other sections are someone else's
    p = tmp_path / "exp.yaml"
    p.write_text("model:\n  hidden: 64\n  heads: 4\ntrain:\n  lr: 5.0e-5\n")
    assert load_config(p).hidden == 64 and load_config(str(p)).heads == 4


@pytest.mark.parametrize("text, match", [
    ("model:\n  hidden: 30\n  heads: 4\n", "divisible"),
    ("model:\n  hiden: 64\n", "unknown model keys.*hiden"),
    ("model:\n  dropout: 1.5\n", "dropout"),
    ("model:\n  max_text_len: 2\n", "max_text_len"),
    ("model:\n  heads: 0\n", "heads"),
    ("- a list\n", "mapping"),
])
def test_config_errors(tmp_path, text, match):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(p)


def test_config_errors_missing():
    with pytest.raises(ConfigError, match="unknown config preset 'huge'.*tiny"):
        load_config("huge")
    with pytest.raises(ConfigError, match="not found"):
        load_config("nowhere/x.yaml")
    with pytest.raises(ConfigError, match="temperature_init"):
        ModelConfig(temperature_init=0.0)


def test_disentangled_fusion_routes_regions_through_their_own_projection(cfg):
    """DiMBERT's attention: with the region projection a copy of the text one, the fused output
    is the shared model's; changed, it changes the output, and both projections learn."""
    torch.manual_seed(0)
    shared = MVP(cfg).eval()
    split = MVP(dataclasses.replace(cfg, disentangled_fusion=True)).eval()
    state = shared.state_dict()
    for k, block in enumerate(shared.cross_encoder.blocks):   # regions: the text projection
        state[f"cross_encoder.blocks.{k}.attn.qkv_second.weight"] = block.attn.qkv.weight
        state[f"cross_encoder.blocks.{k}.attn.qkv_second.bias"] = block.attn.qkv.bias
    split.load_state_dict(state)
    b = make_batch(cfg)
    real = torch.cat([b["mask"], b["visual"].region_mask], 1)
    _, _, f_shared = run(shared, b)
    _, _, f_split = run(split, b)
    assert torch.allclose(f_shared.hidden[real], f_split.hidden[real], atol=1e-6)
    with torch.no_grad():
        split.cross_encoder.blocks[0].attn.qkv_second.weight.mul_(1.5)
    _, _, f_changed = run(split, b)
    assert not torch.allclose(f_shared.hidden[real], f_changed.hidden[real], atol=1e-3)
    split.train()
    _, _, fused = run(split, b)
    fused.pooled.sum().backward()
    attn = split.cross_encoder.blocks[0].attn
    assert attn.qkv.weight.grad.abs().sum() > 0 and attn.qkv_second.weight.grad.abs().sum() > 0
    assert shared.cross_encoder.blocks[0].attn.qkv_second is None
