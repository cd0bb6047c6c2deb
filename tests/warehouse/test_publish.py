"""warehouse/publish.py: manifests, staged publishes refused by their check, and the retry that
drops rows another writer published first."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from warehouse.publish import AlreadyPublished, new_build, publish_new_rows, publish_tables
from warehouse.schemas import REJECTS
from warehouse.store import Warehouse, WarehouseError
from warehouse.version import code_version


def _rejects(ids) -> pa.Table:
    return pa.Table.from_pylist([{"id": i, "dataset": "d", "source_file": "f", "record_ref": i,
                                  "reason": "r", "raw": "", "ingest_id": "b"} for i in ids],
                                schema=REJECTS)


def _published_ids(wh: Warehouse) -> list[str]:
    return sorted(i for f in wh.files("rejects") for i in pq.read_table(f)["id"].to_pylist())


def test_new_build_carries_kind_id_fields_code_version_and_time():
    build = new_build("test", build_id="b1", counts={"new": 2})
    assert (build["kind"], build["build_id"], build["counts"]) == ("test", "b1", {"new": 2})
    assert build["code_version"] == code_version()
    assert build["time"].endswith("Z") and len(build["time"]) == 20


def test_publish_tables_records_its_snapshot_version_and_skips_empty_tables(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    snap = publish_tables(wh, "b1", {"rejects": _rejects(["a"]), "images": _rejects([])},
                          new_build("test", build_id="b1"))
    assert snap.version == 1 and snap.builds[-1]["snapshot"] == 1
    assert snap.tables["rejects"] == ["tables/rejects/b1-rejects.parquet"]
    assert snap.tables["images"] == []


def test_a_refused_publish_leaves_nothing_published_or_staged(tmp_path):
    wh = Warehouse(tmp_path / "wh")

    def check(snapshot):
        raise AlreadyPublished()

    with pytest.raises(AlreadyPublished):
        publish_tables(wh, "b1", {"rejects": _rejects(["a"])}, new_build("test", build_id="b1"),
                       check=check)
    assert wh.current().version == 0
    assert not wh.staging_dir("b1").exists()
    assert not list((tmp_path / "wh").glob("tables/*/*.parquet"))


def test_rows_another_writer_published_are_dropped_and_the_rest_published(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    publish_tables(wh, "other", {"rejects": _rejects(["b"])}, new_build("test", build_id="o"))
    build = new_build("test", build_id="mine")

    def published(snapshot):
        return {i for i in _published_ids(wh) if i in {"a", "b", "c"}}

    snap, dropped = publish_new_rows(
        wh, "mine", lambda drop: {"rejects": _rejects(sorted({"a", "b", "c"} - drop))}, build,
        published)
    assert dropped == {"b"} and snap.version == 2
    assert _published_ids(wh) == ["a", "b", "c"]  # "b" once, from the other writer
    assert snap.tables["rejects"][-1] == "tables/rejects/mine-1-rejects.parquet"


def test_nothing_left_to_publish_publishes_nothing(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    publish_tables(wh, "other", {"rejects": _rejects(["a"])}, new_build("test", build_id="o"))
    snap, dropped = publish_new_rows(
        wh, "mine", lambda drop: None if "a" in drop else {"rejects": _rejects(["a"])},
        new_build("test", build_id="mine"), lambda snapshot: {"a"})
    assert (snap, dropped) == (None, {"a"}) and wh.current().version == 1


def test_gives_up_when_other_writers_keep_publishing_the_same_rows(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    calls = iter(range(100))
    with pytest.raises(WarehouseError, match="kept publishing"):
        publish_new_rows(wh, "mine", lambda drop: {"rejects": _rejects(["a"])},
                         new_build("test", build_id="mine"),
                         lambda snapshot: {f"k{next(calls)}"}, attempts=2)
    assert wh.current().version == 0
