"""nearest_regions (function and `mvp sql` macro) agrees with a numpy cosine over the loaded
vectors, and binds its arguments."""
import numpy as np

from features.extract import extract_features
from features.load import load_region_features
from warehouse.catalog import connect, run_read_only
from warehouse.feature_queries import nearest_regions
from warehouse.ingest.build import ingest


def test_nearest_regions_matches_numpy(tmp_path):
    ingest("shapes", tmp_path / "img", tmp_path / "wh", n_images=8, seed=4, workers=1)
    wh = str(tmp_path / "wh")
    fs = extract_features(wh, backbone="mvp-tiny", max_regions=9, grid=3,
                          progress=False)["feature_set"]
    loaded = load_region_features(wh, fs)
    ids = list(loaded.region_id)
    vecs = loaded.vectors.float().numpy()
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    query = ids[3]
    sims = unit @ unit[3]
    order = [i for i in np.argsort(-sims, kind="stable") if ids[i] != query][:4]

    with connect(wh) as con:
        got = nearest_regions(con, fs, query, 4)
        assert [r[0] for r in got] == [ids[i] for i in order]
        assert np.allclose([r[3] for r in got], sims[order], atol=1e-5)
        assert nearest_regions(con, fs, "x' OR '1'='1", 4) == []  # bound, not spliced
    sql = f"SELECT region_id FROM nearest_regions('{fs}', '{query}', 4)"
    assert [r[0] for r in run_read_only(wh, sql)[1]] == [ids[i] for i in order]
