"""nearest_regions through the vector index gives what the SQL scan gives, is built once per
set of region parts, and refuses nothing but answers [] for an unknown region."""
import numpy as np
import pytest

from features.extract import extract_features
from features.region_index import build_region_index, index_folder, nearest_regions
from warehouse.catalog import connect
from warehouse.feature_queries import nearest_regions as nearest_by_sql
from warehouse.ingest.build import ingest
from warehouse.store import Warehouse


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("region-index")
    ingest("shapes", tmp / "img", tmp / "wh", n_images=8, seed=4, workers=1)
    fs = extract_features(str(tmp / "wh"), backbone="mvp-tiny", max_regions=9, grid=3,
                          progress=False)["feature_set"]
    return tmp / "wh", fs


def test_the_index_finds_what_the_scan_finds(store):
    wh, fs = store
    with connect(str(wh)) as con:
        ids = [r[0] for r in con.execute("SELECT region_id FROM region_features "
                                         "WHERE feature_set = ?", [fs]).fetchall()]
        for query in ids[:10]:
            scan = nearest_by_sql(con, fs, query, 5)
            got = nearest_regions(wh, fs, query, 5)
            assert len(got) == len(scan) == 5
            assert np.allclose([r[3] for r in got], [r[3] for r in scan], atol=1e-4)
            # the same regions, up to the order of equal cosines
            assert {r[0] for r in got if r[3] > scan[-1][3] + 1e-4} <= {r[0] for r in scan}
            assert all(r[0] != query for r in got)
            by_id = {r[0]: r[1:3] for r in scan}
            assert all(by_id[r[0]] == r[1:3] for r in got if r[0] in by_id)   # image, label


def test_built_once_and_unknown_regions_get_nothing(store, tmp_path):
    wh, fs = store
    folder = build_region_index(wh, fs, root=tmp_path)
    stamp = (folder / "index.faiss").stat().st_mtime_ns
    assert build_region_index(wh, fs, root=tmp_path) == folder
    assert (folder / "index.faiss").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]   # no staging left
    assert folder == index_folder(Warehouse(wh), fs, tmp_path)
    assert nearest_regions(wh, fs, "x' OR '1'='1", 4, root=tmp_path) == []
    assert nearest_regions(wh, fs, "no-such-region", 4, root=tmp_path) == []
