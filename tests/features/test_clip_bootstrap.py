"""The bootstrap CLIP: pairs exported as open_clip_train reads them (hostile captions cost their
row), a real open_clip_train run on the tiny store, and its weights loaded as a feature backbone
whose feature-set id differs from random init."""
import pandas as pd
import pytest
import torch

from features.backbone import load_backbone
from features.clip_bootstrap import bootstrap_clip, export_pairs
from features.extract import plan_feature_set
from warehouse.catalog import connect


def test_pairs_read_back_as_open_clip_train_reads_them(tmp_path, tiny_feature_store):
    wh, _, _ = tiny_feature_store(tmp_path)
    with connect(wh) as con:
        n = con.execute("SELECT count(*) FROM captions WHERE split = 'train'").fetchall()[0][0]
    got = export_pairs(wh, tmp_path / "pairs.tsv")
    df = pd.read_csv(tmp_path / "pairs.tsv", sep="\t")   # open_clip_train's CsvDataset
    assert got == {"pairs": n, "skipped": 0} and len(df) == n
    assert df["title"].map(type).eq(str).all() and df["filepath"].str.startswith("/").all()


def test_captions_pandas_reads_as_missing_are_left_out(tmp_path, monkeypatch):
    import features.clip_bootstrap as cb

    class Con:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def execute(self, *a):
            rows = [("/i/1.png", "NA"), ("/i/2.png", 'a "quoted"\tcaption\nover lines'),
                    ("/i/3.png", "  null "), ("/i/4.png", "a red circle")]
            return type("R", (), {"fetchall": lambda self: rows})()
    monkeypatch.setattr(cb, "connect", lambda wh: Con())
    got = export_pairs(tmp_path / "wh", tmp_path / "pairs.tsv")
    df = pd.read_csv(tmp_path / "pairs.tsv", sep="\t")
    assert got == {"pairs": 2, "skipped": 2}
    assert df["title"].tolist() == ['a "quoted" caption over lines', "a red circle"]


@pytest.mark.slow
def test_open_clip_train_run_gives_a_backbone_of_its_own(tmp_path, tiny_feature_store):
    wh, _, _ = tiny_feature_store(tmp_path)
    out = bootstrap_clip(wh, tmp_path / "clip", model="mvp-tiny", epochs=1, batch_size=4,
                         warmup=1, device="cpu")
    trained = load_backbone("mvp-tiny", pretrained=out["weights"], device="cpu")
    random_init = load_backbone("mvp-tiny", pretrained=None, device="cpu")
    assert out["pairs"] > 0 and out["epochs"] == 1
    ckpt = torch.load(tmp_path / "clip" / "clip-bootstrap" / "checkpoints" / "epoch_1.pt",
                      weights_only=True)["state_dict"]
    from safetensors.torch import load_file
    saved = load_file(out["weights"])
    assert saved.keys() == {k.removeprefix("module.") for k in ckpt}
    assert all(torch.equal(saved[k.removeprefix("module.")], v) for k, v in ckpt.items())
    # the backbone's image tower holds exactly the trained weights, away from the seeded init
    tower = trained.visual.state_dict()
    assert all(torch.equal(tower[k], saved[f"visual.{k}"]) for k in tower)
    assert trained.weights_sha256 != random_init.weights_sha256
    init = plan_feature_set(wh, "mvp-tiny", None, 9, 3, "float16", None)
    boot = plan_feature_set(wh, "mvp-tiny", out["weights"], 9, 3, "float16", None)
    assert init.id != boot.id   # feature-set ids keep the two towers apart
