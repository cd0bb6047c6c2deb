"""The pre-training data path: batches against the warehouse they were read from, spans, padding,
deterministic order and refusals."""
import dataclasses

import pytest
import torch
from torch.utils.data import DataLoader

from features.feature_sets import FeatureSetMismatch
from features.load import load_region_features
from features.text_concepts import tokenize
from model.batch import PretrainBatch
from model.config import load_config
from model.mvp import MVP
from model.text import MAX_CONCEPTS, bpe, bpe_tokenizer
from model.training.data import DeterministicSampler, PretrainData
from warehouse.catalog import connect


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_feature_store):
    wh, fs, vocab = tiny_feature_store(tmp_path_factory.mktemp("data"))
    cfg = load_config("tiny", feat_dim=fs["dim"], n_concepts=vocab["concepts"])
    return wh, fs["feature_set"], vocab["vocab"], cfg


@pytest.fixture(scope="module")
def data(built):
    return PretrainData(*built)


def _captions(wh) -> dict:
    with connect(wh) as con:
        return dict(con.execute("SELECT id, text FROM captions").fetchall())


def test_batch_matches_the_contract(built, data):
    wh, _, _, cfg = built
    with connect(wh) as con:
        n_train = con.execute("SELECT count(*) FROM captions WHERE split = 'train'").fetchone()[0]
    assert 0 < len(data) == n_train < 36  # 12 shapes images, 3 captions each; some held out
    b = data.collate([data[i] for i in range(7)])
    assert isinstance(b, PretrainBatch) and len(b) == 7
    v = b.visual
    for part, name, dtype in [(b, "token_ids", torch.long), (b, "concept_ids", torch.long),
                              (b, "concept_spans", torch.long), (v, "tag_ids", torch.long),
                              (v, "regions", data.regions.vectors.dtype),
                              (v, "geometry", torch.float32),
                              (b, "image_index", torch.long), (b, "token_mask", torch.bool),
                              (b, "concept_mask", torch.bool), (v, "tag_mask", torch.bool),
                              (v, "region_mask", torch.bool)]:
        assert getattr(part, name).dtype == dtype, name
    # regions stay as stored (float16 here): the model reads them exactly as a float32 cast
    assert v.regions.dtype == torch.float16
    model = MVP(cfg).eval()
    with torch.no_grad():
        as_stored = model.encode_visual(v).hidden
        as_float = model.encode_visual(dataclasses.replace(v, regions=v.regions.float())).hidden
    assert torch.equal(as_stored, as_float)
    B, Lw = b.token_ids.shape
    C, Lg, R = b.concept_ids.shape[1], b.visual.tag_ids.shape[1], b.visual.regions.shape[1]
    assert b.concept_spans.shape == (B, C, 2) and b.visual.regions.shape == (B, R, cfg.feat_dim)
    assert b.visual.geometry.shape == (B, R, 6) and b.visual.region_mask.shape == (B, R)
    assert C <= MAX_CONCEPTS and Lg <= cfg.max_tags and R <= cfg.max_regions
    # text fits: [CLS] words concepts [SEP]
    assert (b.token_mask.sum(1) + b.concept_mask.sum(1) + 1 <= cfg.max_text_len).all()
    assert (b.token_ids[:, 0] == cfg.cls_id).all()
    # every caption text is here, BPE-tokenised word by word after [CLS]
    texts = _captions(wh)
    for k, cid in enumerate(b.caption_ids):
        words = [t for w in tokenize(texts[cid]) for t in bpe(w)]
        assert b.token_ids[k, 1:b.token_mask[k].sum()].tolist() == words
    # concepts are offset into the concept range of the shared vocabulary
    real = b.concept_ids[b.concept_mask]
    assert ((real >= cfg.concept_offset) & (real < cfg.concept_offset + cfg.n_concepts)).all()


def test_padding_and_masks(built, data):
    cfg = built[3]
    b = data.collate([data[i] for i in range(len(data))])
    for ids, mask in [(b.token_ids, b.token_mask), (b.concept_ids, b.concept_mask),
                      (b.visual.tag_ids, b.visual.tag_mask)]:
        assert (ids[~mask] == cfg.pad_id).all() and (ids[mask] != cfg.pad_id).all()
        # real entries first, then padding
        assert (mask.long().diff(dim=1) <= 0).all()
    pad = ~b.visual.region_mask
    assert (b.visual.regions[pad] == 0).all() and (b.visual.geometry[pad] == 0).all()
    assert (b.concept_spans[~b.concept_mask] == 0).all()
    # lengths differ across captions, so padding is really exercised
    assert b.token_mask.sum(1).unique().numel() > 1
    # tags: [CLS] labels [SEP] of the image's distinct region labels
    for k in range(len(b)):
        n = int(b.visual.tag_mask[k].sum())
        assert b.visual.tag_ids[k, 0] == cfg.cls_id and b.visual.tag_ids[k, n - 1] == cfg.sep_id


def test_concept_spans_decode_to_their_words(built, data):
    wh, _, vocab, cfg = built
    with connect(wh) as con:
        concept_text = dict(con.execute("SELECT id, text FROM concepts WHERE vocab = ?",
                                        [vocab]).fetchall())
    tok = bpe_tokenizer()
    b = data.collate([data[i] for i in range(len(data))])
    checked = 0
    for k in range(len(b)):
        for c, (s, e) in zip(b.concept_ids[k][b.concept_mask[k]], b.concept_spans[k]):
            assert 1 <= s < e <= b.token_mask[k].sum()
            decoded = tok.decode(b.token_ids[k, s:e].tolist()).split()
            concept = concept_text[int(c) - cfg.concept_offset].split()
            # the span covers its words: an object is its head noun, an attribute
            # attribute..head, a relation subject..object (lemmas of the caption's words)
            assert decoded[-1].rstrip("s") == concept[0 if len(concept) < 3 else -1].rstrip("s")
            checked += 1
    assert checked > 50


def test_regions_are_the_images_vectors(built, data):
    wh, fs, _, cfg = built
    rf = load_region_features(wh, fs)
    b = data.collate([data[i] for i in range(len(data))])
    row = {img: k for k, img in enumerate(rf.image_ids)}
    for k, img in enumerate(b.image_ids):
        r0, r1 = rf.offsets[row[img]:row[img] + 2]
        n = int(b.visual.region_mask[k].sum())
        assert n == min(r1 - r0, cfg.max_regions)
        assert torch.equal(b.visual.regions[k, :n], rf.vectors[r0:r0 + n].float())
        assert torch.equal(b.visual.geometry[k, :n], torch.tensor(rf.geometry[r0:r0 + n]))
        # MAMO's explicit target: each region's label as its first BPE piece, -100 on padding
        assert b.visual.region_labels[k, :n].tolist() == [bpe(label)[0]
                                                          for label in rf.label[r0:r0 + n]]
        assert (b.visual.region_labels[k, n:] == -100).all()
    # same image <-> same image_index
    same_img = torch.tensor([[a == c for c in b.image_ids] for a in b.image_ids])
    assert torch.equal(same_img, b.image_index[:, None] == b.image_index[None, :])


def test_truncation_to_the_config(built):
    wh, fs, vocab, cfg = built
    small = dataclasses.replace(cfg, max_text_len=12, max_tags=4, max_regions=2)
    d = PretrainData(wh, fs, vocab, small)
    b = d.collate([d[i] for i in range(len(d))])
    assert (b.token_mask.sum(1) + b.concept_mask.sum(1) + 1 <= 12).all()
    assert b.visual.tag_ids.shape[1] <= 4 and b.visual.regions.shape[1] == 2
    # spans never point past the kept words (empty when a concept's words were cut)
    ends = b.concept_spans[..., 1]
    assert (ends <= b.token_mask.sum(1, keepdim=True)).all()
    assert (b.concept_spans[..., 0] <= ends).all()


def test_sampler_is_deterministic_and_resumes():
    a = list(DeterministicSampler(50, seed=7, epoch=2))
    assert sorted(a) == list(range(50))
    assert a == list(DeterministicSampler(50, seed=7, epoch=2))
    assert a != list(DeterministicSampler(50, seed=7, epoch=3))
    assert a != list(DeterministicSampler(50, seed=8, epoch=2))
    assert list(DeterministicSampler(50, seed=7, epoch=2, start=13)) == a[13:]
    assert len(DeterministicSampler(50, 7, 2, start=13)) == 37
    with pytest.raises(ValueError):
        DeterministicSampler(50, 7, 2, start=51)


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_order_and_resume(data, workers):
    def ids(start):
        sampler = DeterministicSampler(len(data), seed=1, epoch=0, start=start)
        loader = DataLoader(data, batch_sampler=sampler.batches(8), collate_fn=data.collate,
                            num_workers=workers)
        return [c for b in loader for c in b.caption_ids]

    full = ids(0)
    order = DeterministicSampler(len(data), seed=1, epoch=0).permutation().tolist()
    assert full == [str(data.caption_ids[i]) for i in order]
    assert ids(10) == full[10:]


def test_mismatches_are_refused(built):
    wh, fs, vocab, cfg = built
    with pytest.raises(FeatureSetMismatch, match="dim"):
        PretrainData(wh, fs, vocab, dataclasses.replace(cfg, feat_dim=cfg.feat_dim + 1))
    with pytest.raises(FeatureSetMismatch, match="id"):
        PretrainData(wh, fs, vocab, dataclasses.replace(cfg, feature_set="0123456789abcdef"))
    with pytest.raises(ValueError, match="vocabulary"):
        PretrainData(wh, fs, vocab, dataclasses.replace(cfg, vocab_version="other"))
    with pytest.raises(ValueError, match="n_concepts"):
        PretrainData(wh, fs, vocab, dataclasses.replace(cfg, n_concepts=3))
    with pytest.raises(LookupError):
        PretrainData(wh, "nosuchset", vocab, cfg)
    with pytest.raises(LookupError):
        PretrainData(wh, fs, "nosuchvocab", cfg)
    # the matching ids are accepted
    ok = dataclasses.replace(cfg, feature_set=fs, vocab_version=vocab)
    assert len(PretrainData(wh, fs, vocab, ok, split=None)) == 36  # every split
    assert len(PretrainData(wh, fs, vocab, cfg, split="no-such-split")) == 0
