"""Run pictures: real PNGs of the documented pixel sizes, and grounding that picks, for each
phrase, the region of highest cosine among real regions (the quantity WPG scores)."""
import mlflow
import pytest
import torch
from PIL import Image

from model import losses
from model.batch import assemble_text
from model.config import load_config
from model.mvp import MVP
from model.pipeline.pictures import (
    best_regions,
    ground_caption,
    grounding_picture,
    loss_curves,
    retrieval_examples,
)
from model.training.data import PretrainData
from warehouse.catalog import connect


def _png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_best_region_is_the_cosine_argmax_among_real_regions():
    phrases = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    regions = torch.tensor([[0.0, 2.0], [3.0, 0.1], [-1.0, -1.0], [1.0, 1.0]])
    # cos(phrase 2, region 3) = 1 would win, but region 3 is padding
    mask = torch.tensor([True, True, True, False])
    assert best_regions(phrases, regions, mask).tolist() == [1, 0, 1]
    assert best_regions(phrases, regions, torch.ones(4, dtype=torch.bool)).tolist() == [1, 0, 3]


@pytest.mark.slow
def test_loss_curves_png(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("art", artifact_location=(tmp_path / "a").as_uri())
    runs = {}
    for label, scale in (("stage1", 1.0), ("stage2", 0.5)):
        run = client.create_run(exp)
        for step in range(1, 6):
            client.log_metric(run.info.run_id, "loss", scale / step, step=step)
            client.log_metric(run.info.run_id, "vsc", scale / step ** 0.5, step=step)
        runs[label] = run.info.run_id
    path = loss_curves(client, runs, ["loss", "vsc", "itm"], tmp_path / "losses.png")
    assert _png_size(path) == (1200, 300)  # three 400 x 300 panels


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_feature_store):
    wh, fs, vocab = tiny_feature_store(tmp_path_factory.mktemp("artifacts"))
    with connect(wh) as con:
        n = con.execute("SELECT max(id) + 1 FROM concepts WHERE vocab = ?",
                        [vocab["vocab"]]).fetchall()[0][0]
    cfg = load_config("tiny", feat_dim=fs["dim"], n_concepts=int(n),
                      feature_set=fs["feature_set"], vocab_version=vocab["vocab"])
    torch.manual_seed(0)
    data = PretrainData(wh, fs["feature_set"], vocab["vocab"], cfg, split=None)
    return wh, MVP(cfg).eval(), data


def test_retrieval_and_grounding_pngs(tiny, tmp_path):
    wh, model, data = tiny
    path = retrieval_examples(model, data, wh, tmp_path / "retrieval.png", n=3, k=5)
    assert _png_size(path) == ((5 + 2) * 160, 3 * 160)
    index = next(i for i in range(len(data)) if len(data[i]["concept_ids"]) >= 2)
    path = grounding_picture(model, data, index, tmp_path / "grounding.png", wh)
    assert _png_size(path) == (600, 600)
    assert _png_size(grounding_picture(model, data, index, tmp_path / "g2.png")) == (600, 600)


def test_grounding_is_what_wpg_scores_with_top_1(tiny):
    """WPG with top_k=1 scores a caption by the mean cosine of each phrase with ITS best region:
    the picture's regions are exactly those."""
    _, model, data = tiny
    index = next(i for i in range(len(data)) if len(data[i]["concept_ids"]) >= 2)
    concepts, best = ground_caption(model, data, index)
    other = next(i for i in range(len(data)) if data[i]["image_index"]
                 != data[index]["image_index"])
    batch, cfg = data.collate([data[index], data[other]]), model.cfg
    with torch.no_grad():
        ids, mask, start = assemble_text(batch.token_ids, batch.token_mask, batch.concept_ids,
                                         batch.concept_mask, cfg.sep_id, cfg.pad_id)
        fused = model.fuse(model.encode_text(ids, mask), model.encode_visual(batch.visual))
        C = batch.concept_ids.shape[1]
        phrases = fused.text_hidden[:, start:start + C]
        out = losses.wpg(phrases, batch.concept_mask, fused.region_hidden, batch.visual.region_mask,
                         torch.Generator().manual_seed(0), top_k=1)
    n = len(concepts)
    cos = torch.nn.functional.cosine_similarity(phrases[0, :n],
                                                fused.region_hidden[0, best], dim=-1)
    assert out.positive_score[0].item() == pytest.approx(cos.mean().item(), abs=1e-5)
    assert concepts == (data[index]["concept_ids"] - cfg.concept_offset).tolist()
