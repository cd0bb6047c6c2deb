"""Compaction: small parts merged into one sorted part by one commit; readers see the same rows
(and training the same cache bytes), time travel still reads the old parts until the vacuum,
which takes only replaced parts older than the grace period; a compaction whose inputs another
compaction already replaced is refused and leaves no part behind."""
import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.extract import extract_features
from model.config import load_config
from model.training.feature_cache import build_cache
from warehouse.compact import compact, compact_table, plan_bins
from warehouse.publish import new_build, publish_tables
from warehouse.schemas import REJECTS
from warehouse.store import Warehouse, WarehouseError


def _rejects(ids) -> pa.Table:
    return pa.Table.from_pylist([{"id": i, "dataset": "d", "source_file": "f", "record_ref": i,
                                  "reason": "r", "raw": "", "ingest_id": "b"} for i in ids],
                                schema=REJECTS)


def _rows(wh: Warehouse, snapshot=None) -> list[str]:
    snap = snapshot or wh.current()
    out = []
    for rel in snap.tables["rejects"]:
        with wh.storage.fs.open(wh.storage.path(rel), "rb") as f:
            out += pq.read_table(f)["id"].to_pylist()
    return out


def _five_small_commits(wh: Warehouse) -> None:
    for n in range(5):  # ids out of order, so the merged part's sort shows
        publish_tables(wh, f"b{n}", {"rejects": _rejects([f"r{(7 * n + k) % 10}-{n}"
                                                          for k in range(3)])},
                       new_build("test", build_id=f"b{n}"))


def test_small_parts_become_one_sorted_part_and_time_travel_still_reads_the_old(root):
    wh = Warehouse(root, checkpoint_every=4)  # a checkpoint after the compaction too
    _five_small_commits(wh)
    before = wh.current()
    report = compact_table(wh, "rejects")
    after = wh.current()
    assert (report["parts_before"], report["parts_merged"], report["parts_after"]) == (5, 5, 1)
    assert after.version == before.version + 1 and len(after.tables["rejects"]) == 1
    assert _rows(wh) == sorted(_rows(wh, before))  # the same 15 rows, sorted by id
    assert len(_rows(wh)) == 15
    assert after.builds[-1]["kind"] == "compact"
    assert [v for v, _ in wh.verify_chain()] == list(range(1, after.version + 1))
    old = wh.snapshot_at(before.version)
    assert old.tables["rejects"] == before.tables["rejects"] and _rows(wh, old) == _rows(wh, before)
    assert compact_table(wh, "rejects")["snapshot"] is None  # nothing small left to merge


def test_the_vacuum_takes_replaced_parts_only_after_the_grace_period(root):
    wh = Warehouse(root)
    _five_small_commits(wh)
    old_parts = wh.current().tables["rejects"]
    compact(wh, ["rejects"])
    assert wh.remove_orphans(grace_s=3600) == 0
    assert all(wh.storage.exists(rel) for rel in old_parts)
    assert wh.remove_orphans(grace_s=0) == 5
    assert not any(wh.storage.exists(rel) for rel in old_parts)
    assert len(_rows(wh)) == 15 and wh.files("rejects")  # the merged part stays


def test_a_compaction_of_parts_already_replaced_is_refused_and_leaves_nothing(root, tmp_path):
    wh = Warehouse(root)
    _five_small_commits(wh)
    stale = wh.current()
    compact_table(wh, "rejects")
    listed = set(wh.storage.listing("tables"))
    part = tmp_path / "c-0.parquet"
    pq.write_table(_rejects(["x"]), part)
    with pytest.raises(WarehouseError, match="no longer live"):
        wh.publish({"rejects": [part]}, new_build("compact", build_id="c"),
                   removed={"rejects": stale.tables["rejects"]})
    assert set(wh.storage.listing("tables")) == listed


def test_bins_leave_large_parts_alone_and_stop_at_the_target():
    from warehouse.snapshot import Snapshot
    sizes = {"a": 10, "b": 10, "c": 100, "d": 30, "e": 30, "f": 30, "g": 5}
    snap = Snapshot(7, {"rejects": list(sizes)}, parts={k: {"size": v} for k, v in sizes.items()})
    # c (>= 3/4 of the target) is left alone and ends the group before it
    assert plan_bins(snap, "rejects", 100) == [["a", "b"], ["d", "e", "f", "g"]]
    # a group stops before it would pass the target; single small parts are not rewritten
    assert plan_bins(snap, "rejects", 50) == [["a", "b"], ["f", "g"]]


def _cache_digest(folder) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.glob("*.bin")):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_training_reads_the_same_cache_bytes_after_compacting_every_table(tiny_feature_store,
                                                                          tmp_path):
    wh, _, vocab = tiny_feature_store(tmp_path)
    fs = extract_features(wh, backbone="mvp-tiny", max_regions=8, grid=2, shard_size=4,
                          progress=False)  # three shards: three small parts per feature table
    cfg = load_config("tiny", feat_dim=fs["dim"], n_concepts=vocab["concepts"])
    before = build_cache(wh, fs["feature_set"], vocab["vocab"], cfg, root=tmp_path / "c")
    reports = {r["table"]: r for r in compact(wh)}
    assert reports["region_features"]["parts_before"] >= 3
    assert reports["region_features"]["parts_after"] == 1
    after = build_cache(wh, fs["feature_set"], vocab["vocab"], cfg, root=tmp_path / "c")
    assert after != before  # new parts: a new key, so the cache was built again from them
    assert _cache_digest(after) == _cache_digest(before)
