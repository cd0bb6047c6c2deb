"""The served pyfunc: the vectors it computes from an image file and a caption are the ones the
pre-training data path feeds the model, it loads through mlflow.pyfunc and through the
`mlflow models predict` CLI offline, and a package without a VQA head answers nothing."""
import base64
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import training_view

from model.batch import assemble_text
from model.downstream.tasks import TASKS
from model.mvp import MVP
from model.serving import heads
from model.serving.pyfunc import log_pyfunc
from model.training.concepts import ConceptVocabulary
from warehouse.catalog import connect
from warehouse.store import Warehouse


def test_served_vectors_are_the_training_ones(served):
    data, item, boxes, labels, path, text = training_view(served)
    out = served["pyfunc"].predict(pd.DataFrame(
        {"image_path": [path], "boxes": [boxes], "tags": [labels], "text": [text]}))
    row = out.iloc[0]
    assert row["box_source"] == "given" and row["n_regions"] == len(boxes)

    m, batch = served["model"], data.collate([item])
    with torch.no_grad():
        ids, mask, _ = assemble_text(batch.token_ids, batch.token_mask, batch.concept_ids,
                                     batch.concept_mask, m.cfg.sep_id, m.cfg.pad_id)
        text_out = m.encode_text(ids, mask)
        visual = m.encode_visual(batch.visual)
        p_match = m.itm_logits(m.fuse(text_out, visual)).softmax(-1)[0, 1]
    # same ids (words, concepts, tags) -> the same text vector to float precision
    np.testing.assert_allclose(row["text_embedding"], text_out.g[0].numpy(), atol=1e-6)
    # regions recomputed from the PNG vs the warehouse's float16 copies
    np.testing.assert_allclose(row["image_embedding"], visual.g[0].numpy(), atol=2e-3)
    assert row["match_score"] == pytest.approx(float(p_match), abs=2e-3)
    g_t, g_v = np.array(row["text_embedding"]), np.array(row["image_embedding"])
    assert np.linalg.norm(g_t) == pytest.approx(1, abs=1e-5)
    assert row["cosine"] == pytest.approx(float(g_t @ g_v), abs=1e-5)
    assert row["concepts"] and row["answer"] is None


@pytest.mark.slow
def test_grid_bytes_and_cli_agree(served, tmp_path):
    _, _, _, _, path, text = training_view(served)
    raw = open(path, "rb").read()
    frame = pd.DataFrame({"image": [raw, None], "image_path": [None, path],
                          "text": [text, None], "question": ["what shape is left?", None]})
    out = served["pyfunc"].predict(frame)
    # no boxes: the feature set's 3x3 grid; bytes and path give the same image
    assert list(out["box_source"]) == ["grid", "grid"] and list(out["n_regions"]) == [9, 9]
    np.testing.assert_allclose(out["image_embedding"][0], out["image_embedding"][1], atol=1e-6)
    assert out["text_embedding"][1] is None and np.isnan(out["match_score"][1])
    assert out["answer"][0] is None  # a question, but no VQA head packaged
    assert list(out["error"]) == [None, None]

    # MLflow's JSON reader cannot take a null in a binary or array column: a JSON request
    # gives such a column in every row or in none (model/serving/pyfunc.py)
    b64 = base64.b64encode(raw).decode()
    request = tmp_path / "input.json"
    request.write_text(json.dumps({"dataframe_records": [
        {"image": b64, "boxes": [[0.0, 0.0, 64.0, 64.0]], "text": text},
        {"image": b64, "boxes": [[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 60.0, 40.0]]}]}))
    env = {**os.environ, "MLFLOW_TRACKING_URI": served["uri"], "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "models", "predict", "-m", served["info"].model_uri,
         "-i", str(request), "-t", "json", "--env-manager", "local",
         "-o", str(tmp_path / "out.json")],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    cli = json.loads((tmp_path / "out.json").read_text())["predictions"]
    here = served["pyfunc"].predict(pd.DataFrame(
        {"image": [raw], "boxes": [[[0.0, 0.0, 64.0, 64.0]]], "text": [text]}))
    np.testing.assert_allclose(cli[0]["image_embedding"], here["image_embedding"][0], atol=1e-6)
    np.testing.assert_allclose(cli[0]["text_embedding"], here["text_embedding"][0], atol=1e-6)
    assert cli[0]["match_score"] == pytest.approx(here["match_score"][0], abs=1e-6)
    assert cli[1]["box_source"] == "given" and cli[1]["n_regions"] == 2
    assert cli[1]["text_embedding"] is None
    assert cli[0]["error"] is None and cli[1]["error"] is None


def test_the_package_is_code_and_a_weights_only_checkpoint(served):
    """Models-from-code: no pickled Python object in the package, and its checkpoint needs
    nothing outside torch's weights-only allowlist."""
    local = Path(mlflow.artifacts.download_artifacts(served["info"].model_uri))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["model_code_path"].endswith("model_code.py") and "python_model" not in flavor
    assert not list(local.rglob("*.pkl"))
    checkpoint = local / flavor["artifacts"]["checkpoint"]["path"]
    assert torch.serialization.get_unsafe_globals_in_checkpoint(checkpoint) == []


def test_a_row_without_image_is_refused(served):
    out = served["pyfunc"].predict(pd.DataFrame({"text": ["a red square"]}))
    assert out["error"][0].startswith("row 0: give `image`")
    assert out["image_embedding"][0] is None


def test_a_head_whose_module_is_absent(served, monkeypatch):
    absent = dataclasses.replace(TASKS["vqa"], module="model.no_such_vqa_module")
    monkeypatch.setitem(TASKS, "vqa", absent)
    assert not heads.available(absent) and heads.load(absent, None) is None
    with pytest.raises(ModuleNotFoundError, match="load_vqa and serve"):
        heads.load(absent, "vqa.pt")
    checkpoint = served["tmp"] / "runs" / "joint" / "last.pt"
    with mlflow.start_run(), pytest.raises(ModuleNotFoundError, match="load_vqa and serve"):
        log_pyfunc(checkpoint, served["wh"], head_checkpoints={"vqa": checkpoint})


def test_served_answers_are_the_fine_tuning_path_ones(served, tmp_path):
    """A packaged VQA head answers a question on an image file as model.vqa answers the same
    question from the warehouse (same question + tag tokens, same regions)."""
    from model.downstream.vqa.data import VQAData
    from model.downstream.vqa.finetune import VQAModel, answer
    cfg = served["model"].cfg
    data = VQAData(served["wh"], served["fs"], cfg, split=None)
    torch.manual_seed(0)
    vqa_model = VQAModel(MVP(cfg), data.answer_vocab).eval()
    picks = range(min(len(data), 6))
    batch = data.collate([data[i] for i in picks])
    with torch.no_grad():  # an untrained model's states barely differ: centre the logits on
        m = vqa_model.mvp  # them, so the answers depend on each question and image
        h = vqa_model.transform(m.fuse(m.encode_text(batch.token_ids, batch.token_mask),
                                       m.encode_visual(batch.visual)).hidden[:, 0])
        vqa_model.classifier.bias.copy_(-vqa_model.classifier.weight @ h.mean(0))
    checkpoint = tmp_path / "vqa.pt"
    torch.save({"model": vqa_model.state_dict(), "model_config": cfg.to_dict()}, checkpoint)
    with mlflow.start_run():
        info = log_pyfunc(served["tmp"] / "runs" / "joint" / "last.pt", served["wh"],
                          head_checkpoints={"vqa": checkpoint})
    pyfunc = mlflow.pyfunc.load_model(info.model_uri)

    with connect(served["wh"]) as con:
        rows = []
        for i in picks:
            k, side = int(data.image_of[i]), data.images.regions
            by_id = {rid: rest for rid, *rest in con.execute(
                "SELECT f.region_id, f.x1, f.y1, f.x2, f.y2, f.label, i.path FROM "
                "region_features f JOIN images i ON i.id = f.image_id "
                "WHERE f.feature_set = ? AND f.image_id = ?",
                [served["fs"], side.image_ids[k]]).fetchall()}
            stored = [by_id[r] for r in side.region_id[side.offsets[k]:side.offsets[k + 1]]]
            rows.append({"image_path": stored[0][5], "question": data.questions[i],
                         "boxes": [list(r[:4]) for r in stored],
                         "tags": [r[4] for r in stored if r[4]]})
    served_answers = pyfunc.predict(pd.DataFrame(rows))["answer"].tolist()
    expected = answer(vqa_model, batch)
    assert served_answers == expected and len(set(expected)) > 1, expected
    tags = data.images.tag_words(int(data.image_of[0])).tolist()
    vocabulary = ConceptVocabulary.from_warehouse(Warehouse(served["wh"]), cfg.vocab_version)
    concepts = vocabulary.encode(data.questions[0], cfg).concept_ids
    assert heads.question_tokens(data.questions[0], tags, cfg, concepts) == \
        data.tokens[0].tolist()
    assert any(any(t >= cfg.concept_offset for t in row) for row in data.tokens)  # concepts in


@pytest.mark.slow
def test_a_caption_searches_the_packaged_gallery(served):
    """A package logged with a gallery answers a caption alone with its nearest images: the
    dual encoder's cosine against every image of the split, best first; rows with an image
    are answered as before, and a head column without an image is refused."""
    from model.downstream.evaluate import gallery_vectors
    from model.training.data import PretrainData
    checkpoint = served["tmp"] / "runs" / "joint" / "last.pt"
    with mlflow.start_run():
        info = log_pyfunc(checkpoint, served["wh"], gallery_split="train")
    pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    _, _, boxes, labels, path, text = training_view(served)
    out = pyfunc.predict(pd.DataFrame({"text": [text, "a blue circle", text],
                                       "image_path": [None, None, path],
                                       "question": [None, "what colour?", None]}))
    assert list(out["error"][:1]) + list(out["error"][2:]) == [None, None]
    assert out["error"][1] == "row 1: question needs an image"
    m = served["model"]
    data = PretrainData(served["wh"], served["fs"], served["vocab"], m.cfg, split="train")
    cosine = gallery_vectors(m, data).numpy() @ np.array(out["text_embedding"][0])
    best = np.argsort(-cosine, kind="stable")[:10]
    assert out["gallery_images"][0] == [str(data.regions.image_ids[i]) for i in best]
    np.testing.assert_allclose(out["gallery_scores"][0], cosine[best], atol=1e-5)
    assert out["image_embedding"][0] is None and np.isnan(out["match_score"][0])
    assert out["gallery_images"][2] == out["gallery_images"][0]   # the same caption
    assert out["image_embedding"][2] is not None and not np.isnan(out["match_score"][2])
    # the package without a gallery still refuses a row without an image
    assert served["pyfunc"].predict(pd.DataFrame({"text": [text]}))["error"][0].startswith(
        "row 0: give `image`")
