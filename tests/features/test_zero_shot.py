"""Zero-shot region tagging (features/zero_shot.py) on `shapes` with the tiny tower saved as a
local checkpoint: every tag is recomputed here independently (open_clip text tower, numpy
cosines), then reruns, incremental tagging and the refusals."""
import numpy as np
import open_clip
import pytest
import torch

from features.backbone import register_configs
from features.extract import extract_features
from features.feature_sets import FeatureSetMismatch, FeatureSetSpec, register_feature_set
from features.load import load_region_features
from features.vocabulary import build_vocabulary
from features.zero_shot import prompt_text, tag_regions, top_tags
from warehouse import concept_queries as q
from warehouse.catalog import connect
from warehouse.ingest.build import ingest
from warehouse.store import Warehouse

TOP_K = 2
PROMPT = "a photo of a {}."


def _checkpoint(path, seed):
    """Random weights of the tiny model saved as a checkpoint file OpenCLIP can load."""
    register_configs()
    torch.manual_seed(seed)
    torch.save(open_clip.create_model("mvp-tiny").state_dict(), path)
    return path


def _rows(wh, sql, params=None):
    with connect(wh) as con:
        return con.execute(sql, params or []).fetchall()


def _expected_scores(wh, fs, ckpt, vocab):
    """(region ids, concept ids, cosines [regions, concepts]) computed without features/."""
    model = open_clip.create_model("mvp-tiny", pretrained=str(ckpt)).eval()
    concepts = _rows(wh, "SELECT id, tuple[1] FROM concepts WHERE vocab = ? AND kind = 'object'"
                         " ORDER BY id", [vocab])
    tokens = open_clip.get_tokenizer("mvp-tiny")([PROMPT.format(t) for _, t in concepts])
    with torch.no_grad():
        text = model.encode_text(tokens).numpy()
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    regions = load_region_features(wh, fs)
    vecs = regions.vectors.float().numpy()
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return regions.region_id, np.array([c for c, _ in concepts]), vecs @ text.T


@pytest.fixture(scope="module")
def tagged(tmp_path_factory, nltk_data):
    root = tmp_path_factory.mktemp("zero_shot")
    wh = root / "wh"
    ingest("shapes", root / "img", wh, n_images=8, workers=1)
    vocab = build_vocabulary(wh, min_count=2)["vocab"]
    ckpt = _checkpoint(root / "tiny.pt", seed=1)
    fs = extract_features(wh, "mvp-tiny", pretrained=str(ckpt), progress=False)["feature_set"]
    region_ids, concept_ids, scores = _expected_scores(wh, fs, ckpt, vocab)
    # a threshold halfway between two neighbouring top-k scores near their 40th percentile:
    # some top-k candidates are kept, some dropped, none is within float error of the line
    top = np.sort(np.sort(scores, axis=1)[:, -TOP_K:].ravel())
    k = int(0.4 * len(top))
    threshold = float((top[k] + top[k + 1]) / 2)
    assert top[k + 1] - top[k] > 1e-5
    report = tag_regions(wh, fs, top_k=TOP_K, threshold=threshold, pretrained_path=ckpt,
                         prompt=PROMPT)
    return dict(root=root, wh=wh, vocab=vocab, ckpt=ckpt, fs=fs, report=report,
                threshold=threshold, region_ids=region_ids, concept_ids=concept_ids,
                scores=scores)


def test_tags_equal_an_independent_recomputation(tagged):
    t = tagged
    expected = {}
    for i, region in enumerate(t["region_ids"]):
        order = np.argsort(-t["scores"][i])[:TOP_K]
        for rank, j in enumerate(order, 1):
            if t["scores"][i, j] >= t["threshold"]:
                expected[(region, int(t["concept_ids"][j]), rank)] = t["scores"][i, j]
    got = _rows(t["wh"], "SELECT region_id, concept_id, rank, score, tagging, vocab, "
                         "feature_set FROM region_tags")
    assert {g[:3] for g in got} == set(expected)
    assert 0 < len(got) < TOP_K * len(t["region_ids"])  # the threshold dropped some
    for region, concept, rank, score, tagging, vocab, fs in got:
        assert score == pytest.approx(expected[(region, concept, rank)], abs=1e-5)
        assert score >= t["threshold"]
        assert (tagging, vocab, fs) == (t["report"]["tagging"], t["vocab"], t["fs"])
    per_region = _rows(t["wh"], "SELECT max(c) FROM (SELECT count(*) AS c FROM region_tags "
                                "GROUP BY region_id)")[0][0]
    assert per_region <= TOP_K
    r = t["report"]
    assert (r["skipped"], r["regions"], r["images"], r["region_tags"]) == \
        (False, len(t["region_ids"]), 8, len(got))


def test_image_concepts_are_max_over_regions_and_marked_zero_shot(tagged):
    wh, vocab = tagged["wh"], tagged["vocab"]
    zero_shot = _rows(wh, "SELECT image_id, concept_id, score FROM image_concepts "
                          "WHERE source = 'zero-shot' ORDER BY ALL")
    expected = _rows(wh, "SELECT image_id, concept_id, max(score) FROM region_tags "
                         "GROUP BY ALL ORDER BY ALL")
    assert zero_shot == expected and len(zero_shot) == tagged["report"]["image_concepts"]
    # ground truth is untouched: annotation rows, no score
    assert _rows(wh, "SELECT DISTINCT source, score FROM image_concepts WHERE source <> "
                     "'zero-shot'") == [("annotation", None)]
    concept = _rows(wh, "SELECT k.text FROM image_concepts ic JOIN concepts k ON "
                        "k.id = ic.concept_id AND k.vocab = ic.vocab WHERE ic.source = "
                        "'zero-shot' ORDER BY ic.score DESC LIMIT 1")[0][0]
    with connect(wh) as con:
        sources = {s for *_, s in q.images_with_concept(con, concept, vocab=vocab) if s}
    assert any("zero-shot" in s.split(",") for s in sources)


def test_rerun_is_skipped_and_new_images_alone_are_tagged(tagged):
    t = tagged
    kwargs = dict(top_k=TOP_K, threshold=t["threshold"], pretrained_path=t["ckpt"],
                  prompt=PROMPT)
    before = Warehouse(t["wh"]).current().version
    again = tag_regions(t["wh"], t["fs"], **kwargs)
    assert again["skipped"] is True and again["tagging"] == t["report"]["tagging"]
    assert Warehouse(t["wh"]).current().version == before
    # three more images extracted into the same feature set: only they get tagged
    ingest("shapes", t["root"] / "img2", t["wh"], n_images=3, seed=1, workers=1)
    extract_features(t["wh"], "mvp-tiny", pretrained=str(t["ckpt"]), progress=False)
    more = tag_regions(t["wh"], t["fs"], vocab=t["vocab"], **kwargs)
    assert (more["skipped"], more["images"]) == (False, 3)
    dupes = _rows(t["wh"], "SELECT count(*) FROM (SELECT region_id, concept_id FROM region_tags"
                           " GROUP BY ALL HAVING count(*) > 1)")[0][0]
    assert dupes == 0
    assert _rows(t["wh"], "SELECT count(DISTINCT image_id) FROM region_features")[0][0] == 11


def test_refusals(tagged):
    t = tagged
    wh, other = t["wh"], _checkpoint(t["root"] / "other.pt", seed=2)
    with pytest.raises(FeatureSetMismatch, match="same weights"):   # a new tagging (top_k 1)
        tag_regions(wh, t["fs"], top_k=1, pretrained_path=other)
    with pytest.raises(ValueError, match="pretrained_path"):        # file name only in the table
        tag_regions(wh, t["fs"], top_k=1)

    random_fs = extract_features(wh, "mvp-tiny", pretrained=None, progress=False)["feature_set"]
    with pytest.raises(ValueError, match="random-init"):
        tag_regions(wh, random_fs)
    # threshold -1 keeps every top-1: one object and one attribute ("red circle") per region
    allowed = tag_regions(wh, random_fs, vocab=t["vocab"], threshold=-1.0, top_k=1,
                          allow_random_weights=True, kinds=("object", "attribute"))
    assert allowed["region_tags"] == 2 * allowed["regions"] > 0
    assert _rows(wh, """SELECT k.kind, count(*), max(rank) FROM region_tags rt
                        JOIN concepts k ON k.id = rt.concept_id AND k.vocab = rt.vocab
                        WHERE rt.tagging = ? GROUP BY 1 ORDER BY 1""", [allowed["tagging"]]) \
        == [("attribute", allowed["regions"], 1), ("object", allowed["regions"], 1)]

    imported = FeatureSetSpec(kind="imported", backbone="vinvl", pretrained="vinvl",
                              weights_sha256="0" * 64, box_source="imported", image_size=None,
                              dim=8, dtype="float16", max_regions=50, grid=1, code_version="1")
    register_feature_set(wh, imported)
    with pytest.raises(ValueError, match="not in an OpenCLIP"):
        tag_regions(wh, imported.id)
    with pytest.raises(ValueError, match="prompt"):
        tag_regions(wh, t["fs"], prompt="no placeholder")


def test_top_tags_per_kind_threshold_and_blocks():
    # unit prompts at 0, 60 and 90 degrees (objects) and 30 degrees (an attribute)
    angle = np.deg2rad([0, 60, 90, 30])
    prompts = torch.tensor(np.stack([np.cos(angle), np.sin(angle)], 1), dtype=torch.float32)
    kinds = np.array(["object", "object", "object", "attribute"])
    regions = torch.tensor([[2.0, 0.0], [0.0, -1.0]])  # unnormalised: cos is scale-free
    for batch_size in (1, 4096):                        # one region per block, or all at once
        r, c, score, rank = top_tags(regions, prompts, kinds, top_k=2, threshold=0.4,
                                     batch_size=batch_size)
        # region 0: objects cos 1, .5, 0 -> top 2 both >= .4; attribute cos .866
        # region 1: objects cos 0, -.866, -1 and attribute -.5 -> nothing reaches .4
        assert r.tolist() == [0, 0, 0] and c.tolist() == [0, 1, 3]
        assert rank.tolist() == [1, 2, 1]
        assert score == pytest.approx([1.0, 0.5, np.cos(np.pi / 6)], abs=1e-6)
    assert prompt_text("object", ["circle"]) == "circle"
    assert prompt_text("attribute", ["circle", "red"]) == "red circle"
