"""The feature-store flows for real with Prefect: features on the default runner and on a local
2-worker Dask cluster give the same feature set; the concepts flow builds once and then hits."""
import numpy as np
import pytest

from features.load import load_region_features
from warehouse.catalog import connect
from warehouse.ingest.build import ingest

pytestmark = pytest.mark.slow
PARAMS = dict(backbone="mvp-tiny", shard_size=5, batch_size=4, max_regions=10, grid=3)


def _warehouse(root):
    ingest("shapes", root / "img", root / "wh", n_images=12, seed=5, workers=1)
    return str(root / "wh")


def _features(wh):
    with connect(wh) as con:
        (fs,) = con.execute("SELECT id FROM feature_sets").fetchone()
    return fs, load_region_features(wh, fs)


def test_dask_run_equals_default_run(tmp_path):
    from distributed import LocalCluster

    from flows.feature_store import run_features
    default_wh, dask_wh = _warehouse(tmp_path / "a"), _warehouse(tmp_path / "b")
    first = run_features(warehouse=default_wh, **PARAMS)
    assert first["images"] == 12 and first["shards"] == 3
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        on_dask = run_features(dask_address=cluster.scheduler_address, warehouse=dask_wh,
                               **PARAMS)
    assert on_dask["images"] == 12 and on_dask["regions"] == first["regions"]
    fs_a, a = _features(default_wh)
    fs_b, b = _features(dask_wh)
    assert fs_a == fs_b  # same backbone, weights and policy: the same feature-set id
    order_a, order_b = np.argsort(a.region_id), np.argsort(b.region_id)
    assert list(np.asarray(a.region_id)[order_a]) == list(np.asarray(b.region_id)[order_b])
    va = a.vectors.float().numpy()[order_a]
    vb = b.vectors.float().numpy()[order_b]
    assert np.allclose(va, vb, atol=2e-3), np.abs(va - vb).max()
    # a rerun on either runner finds nothing left to extract
    assert run_features(warehouse=default_wh, **PARAMS)["images"] == 0


def test_concepts_flow_builds_then_reuses(tmp_path):
    from flows.concepts import concepts_flow
    wh = _warehouse(tmp_path)
    first = concepts_flow(warehouse=wh, min_count=2)
    assert first["concepts"] > 0 and not first.get("skipped")
    again = concepts_flow(warehouse=wh, min_count=2)
    assert again["vocab"] == first["vocab"]
    with connect(wh) as con:
        assert con.execute("SELECT count(DISTINCT vocab) FROM concepts").fetchone()[0] == 1


def test_gpu_workers_need_dask_cuda_and_no_running_cluster(monkeypatch):
    import sys

    import pytest

    from flows.feature_store import task_runner
    with pytest.raises(ValueError, match="not both"):
        task_runner("tcp://127.0.0.1:8786", gpus=2)
    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # absent here: no GPU to pin
    with pytest.raises(RuntimeError, match="pip install dask-cuda"):
        task_runner(None, gpus=2)
    assert task_runner(None) is None
