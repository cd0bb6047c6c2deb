"""The whole pipeline on an s3:// warehouse (the loopback S3 server) gives what it gives on a
local one: ingest, features, concepts, zero-shot tags, a few pre-training steps through the
feature cache, and evaluation; every table's rows, the losses and the metrics are equal."""
import itertools

import pytest

from features.extract import extract_features
from features.vocabulary import build_vocabulary
from features.zero_shot import tag_regions
from flows.cli import main
from model.downstream.evaluate import evaluate
from model.training.pretrain import pretrain
from warehouse.catalog import connect
from warehouse.ingest import build
from warehouse.schemas import TABLES
from warehouse.store import Warehouse

# columns that name a build by a random id or record a time, not what the build found
RUN_COLUMNS = {"ingest_id", "build_id", "created"}


def _run(root, images, out, monkeypatch) -> dict:
    # ingest ids are random; fixed here so that what follows from part names (the vocabulary's
    # id) is the same in both warehouses
    ids = (f"ingest{n:06d}" for n in itertools.count())
    monkeypatch.setattr(build, "new_ingest_id", lambda: next(ids))
    build.ingest("shapes", images, root, n_images=12, workers=1)
    fs = extract_features(root, backbone="mvp-tiny", max_regions=9, grid=3, progress=False)
    build_vocabulary(root, min_count=2)
    tag_regions(root, fs["feature_set"], top_k=2, threshold=0.0, allow_random_weights=True)
    run = pretrain(root, "joint", config="tiny", steps=2, out_dir=out / "runs",
                   tracking_uri=f"sqlite:///{out}/mlflow.db", feature_cache=True)
    # what the steps computed; timings (samples_per_s, data_wait_s) differ from run to run
    losses = {k: v for k, v in run["final"].items() if not k.endswith("_s")}
    return {"tables": _tables(root), "losses": losses,
            "metrics": evaluate(run["checkpoint"], root)}


def _tables(root) -> dict[str, list]:
    with connect(root) as con:
        out = {}
        for table in TABLES:
            t = con.sql(f"SELECT * FROM {table}").to_arrow_table()
            t = t.drop_columns([c for c in t.column_names if c in RUN_COLUMNS])
            out[table] = sorted(t.to_pylist(), key=repr)
        return out


@pytest.mark.slow
def test_the_pipeline_on_s3_equals_the_pipeline_on_a_local_disk(s3_root, tmp_path, monkeypatch,
                                                                 capsys):
    monkeypatch.delenv("MVP_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    images = tmp_path / "img"  # both read the same image files, by the same absolute paths
    local = _run(tmp_path / "wh", images, tmp_path / "local", monkeypatch)
    remote = _run(s3_root, images, tmp_path / "s3", monkeypatch)

    assert all(local["tables"][t] for t in ("images", "captions", "region_features",
                                             "concepts", "caption_concepts", "region_tags"))
    for table in TABLES:
        assert remote["tables"][table] == local["tables"][table], table
    assert {"loss", "vsc", "mcr", "itm", "mlm", "wpg"} <= set(local["losses"])
    assert remote["losses"] == local["losses"]
    assert remote["metrics"] == local["metrics"]
    # the commands that run no flow take the URL as it is
    for command in ("tables", "history", "verify"):
        assert main([command, "--warehouse", s3_root]) == 0, command
    assert s3_root in capsys.readouterr().out
    # the feature cache of the s3 warehouse is on the local disk, none of it in the bucket
    storage = Warehouse(s3_root).storage
    assert any(rel.startswith("tables/region_features/") for rel in storage.listing("tables"))
    assert not any(rel.startswith("_cache") for rel in storage.listing(""))
    assert list((Warehouse(s3_root).local_dir() / "_cache" / "training").glob("*/meta.json"))
    assert Warehouse(s3_root).local_dir().is_relative_to(tmp_path / "xdg")
