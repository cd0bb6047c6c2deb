"""The official downstream formats from ingest to evaluation: SNLI-VE's jsonl files and the refer
toolkit's RefCOCO+ pickle, each ingested, given region features, fine-tuned for a few steps and
evaluated, with the counts each report gives checked against the fixture."""
import pytest
from formats import refcoco, snli_ve

from features.extract import extract_features
from model.config import load_config
from model.downstream.entailment.finetune import evaluate_ve, finetune_ve
from model.downstream.refexp.data import HIT_IOU, ReferringData
from model.downstream.refexp.finetune import evaluate_refexp, finetune_refexp
from warehouse.ingest.build import ingest

pytestmark = pytest.mark.slow


def _features(wh):
    return extract_features(wh, backbone="mvp-tiny", max_regions=4, grid=2, progress=False)


def test_snli_ve_files_fine_tune_and_evaluate(tmp_path, make_image):
    wh = tmp_path / "wh"
    ingest("snli-ve", source=snli_ve(tmp_path / "snli", make_image), warehouse=wh, workers=1)
    _features(wh)
    tuned = finetune_ve(wh, None, config="tiny", steps=3, out_dir=tmp_path / "runs",
                        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", eval_split="dev")
    # the fixture's dev split: one hypothesis, labelled entailment
    assert tuned["eval"]["n_hypotheses"] == 1 and tuned["eval"]["best_constant"] == 1.0
    assert tuned["eval"]["by_label"]["neutral"] is None
    train = evaluate_ve(tuned["checkpoint"], wh, "train")
    assert train["n_hypotheses"] == 3 and train["n_without_features"] == 0
    assert train["label_share"] == pytest.approx({"entailment": 1 / 3, "neutral": 1 / 3,
                                                  "contradiction": 1 / 3})


def test_refcoco_files_fine_tune_and_evaluate(tmp_path, make_image, write_json):
    wh = tmp_path / "wh"
    ingest("refcoco+", source=refcoco(tmp_path / "refcoco+", make_image, write_json),
           warehouse=wh, workers=1)
    fs = _features(wh)
    cfg = load_config("tiny", feat_dim=fs["dim"], feature_set=fs["feature_set"])
    # the annotation boxes are the candidates: each expression's gold box is one of them
    data = ReferringData(wh, fs["feature_set"], cfg, split="testA")
    assert len(data) == 3 and data.n_gold_unreachable == 0
    assert all(float(t.max()) == pytest.approx(1.0) for t in data.targets)
    tuned = finetune_refexp(wh, None, config="tiny", steps=3, out_dir=tmp_path / "runs",
                            tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", train_split="testA",
                            eval_split="val")
    val = tuned["eval"]
    assert val["n_expressions"] == 1 and 0.0 <= val["refexp_acc"] <= 1.0
    report = evaluate_refexp(tuned["checkpoint"], wh, "testA")
    # chance: one right candidate among each image's boxes
    expected = sum(float((t >= HIT_IOU).mean()) for t in data.targets) / len(data)
    assert report["chance"] == pytest.approx(expected) and 0 < expected < 1
    assert report["n_expressions"] == 3
