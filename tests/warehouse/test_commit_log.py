"""The commit log on every kind of root (a local folder and an s3:// prefix on a loopback S3
server): commits chain and read back, entries stay small, reads start at the newest checkpoint,
racing writers lose nothing and publish no row twice, and cleanup spares referenced parts."""
import json
import os
import signal
import subprocess
import sys
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import ROOT

from warehouse import log
from warehouse.publish import new_build, publish_new_rows, publish_tables
from warehouse.schemas import REJECTS
from warehouse.store import BrokenChain, CommitConflict, Warehouse

# a publish of one row "k" as build "killed", run in a process that a fault point kills
KILLED_PUBLISH = """
import sys
import pyarrow as pa
from warehouse.publish import new_build, publish_tables
from warehouse.schemas import REJECTS
from warehouse.store import Warehouse
row = {"id": "k", "dataset": "d", "source_file": "f", "record_ref": "k", "reason": "r",
       "raw": "", "ingest_id": "b"}
publish_tables(Warehouse(sys.argv[1]), "killed", {"rejects": pa.Table.from_pylist([row], REJECTS)},
               new_build("test", build_id="killed"))
"""


def _rejects(ids) -> pa.Table:
    return pa.Table.from_pylist([{"id": i, "dataset": "d", "source_file": "f", "record_ref": i,
                                  "reason": "r", "raw": "", "ingest_id": "b"} for i in ids],
                                schema=REJECTS)


def _publish(wh: Warehouse, build_id: str, ids=("x",), check=None):
    return publish_tables(wh, build_id, {"rejects": _rejects(list(ids))},
                          new_build("test", build_id=build_id), check)


def _ids(wh: Warehouse, snapshot=None) -> list[str]:
    snap = snapshot or wh.current()
    out = []
    for rel in snap.tables["rejects"]:
        with wh.storage.fs.open(wh.storage.path(rel), "rb") as f:
            out += pq.read_table(f)["id"].to_pylist()
    return out


def _entries(wh: Warehouse) -> list[str]:
    return sorted(n for n in wh.storage.names(log.FOLDER) if n.endswith(".json")
                  and not n.endswith(".checkpoint.json"))


def test_commits_chain_and_read_back(root):
    wh = Warehouse(root)
    for n in range(3):
        _publish(wh, f"b{n}", ids=[f"r{n}"])
    snap = Warehouse(root).current()
    assert snap.version == 3 and [b["snapshot"] for b in snap.builds] == [1, 2, 3]
    assert snap.tables["rejects"] == [f"tables/rejects/b{n}-rejects.parquet" for n in range(3)]
    assert len(wh.files("rejects")) == 3 and sorted(_ids(wh)) == ["r0", "r1", "r2"]
    assert [v for v, _ in wh.verify_chain()] == [1, 2, 3]
    assert _entries(wh) == [f"{v:020d}.json" for v in (1, 2, 3)]
    assert wh.manifest_path(3).endswith("_log/00000000000000000003.json")


def test_a_commit_on_a_stale_parent_conflicts(root):
    a, b = Warehouse(root), Warehouse(root)
    parent = a.current()
    a.commit(parent, {}, {"kind": "test"})
    with pytest.raises(CommitConflict, match="snapshot 1 was committed by another writer"):
        b.commit(parent, {}, {"kind": "test"})
    assert a.current().version == 1 and len(_entries(a)) == 1


def test_entries_hold_only_what_their_commit_adds(root):
    wh = Warehouse(root, checkpoint_every=1000)
    for n in range(30):
        _publish(wh, f"b{n:03d}")
    sizes = [wh.storage.size(log.entry_name(v)) for v in (2, 15, 30)]
    assert max(sizes) - min(sizes) <= 8, sizes  # a few digits of timestamps, not a growing list
    assert wh.current().version == 30


def test_checkpoints_every_k_and_reads_start_at_the_newest(root):
    wh = Warehouse(root, checkpoint_every=3)
    for n in range(7):
        _publish(wh, f"b{n}", ids=[f"r{n}"])
    full = wh.current()
    names = set(wh.storage.names(log.FOLDER))
    assert {"00000000000000000003.checkpoint.json", "00000000000000000006.checkpoint.json",
            "_last_checkpoint"} <= names
    assert wh.storage.read(log.HINT) == b"6"
    assert [v for v, _ in wh.verify_chain()] == list(range(1, 8))

    wh.storage.write(log.HINT, b"3")  # a stale hint: readers still follow entries forward
    assert Warehouse(root).current().version == 7
    wh.storage.delete(log.HINT)  # no hint: the newest checkpoint is found by listing
    assert Warehouse(root).current().version == 7
    for version in range(1, 6):  # a read never opens what comes before the checkpoint
        wh.storage.delete(log.entry_name(version))
    snap = Warehouse(root).current()
    assert (snap.version, snap.tables, snap.parts, snap.builds, snap.digest) == \
        (7, full.tables, full.parts, full.builds, full.digest)
    _publish(wh, "b7")
    assert Warehouse(root).current().version == 8
    with pytest.raises(BrokenChain, match="is missing"):  # the whole-log check sees the gap
        list(wh.verify_chain())


def test_a_writer_rereads_two_objects_from_its_last_head_and_notices_a_replaced_warehouse(
        root, monkeypatch):
    wh = Warehouse(root, checkpoint_every=50)  # far from a checkpoint: a fresh read follows 6
    for n in range(6):
        _publish(wh, f"b{n}", ids=[f"r{n}"])
    reads = []
    real = type(wh.storage).read
    monkeypatch.setattr(type(wh.storage), "read", lambda self, rel: (reads.append(rel),
                                                                     real(self, rel))[1])
    assert Warehouse(root).current().version == 6
    fresh = len(reads)
    _publish(Warehouse(root), "other", ids=["o"])  # another writer commits 7
    reads[:] = []
    assert wh.current().version == 7
    assert fresh >= 8 and reads == [log.entry_name(6), log.entry_name(7), log.entry_name(8)]
    # the warehouse replaced under the same root: its entry 7 differs, so it is read afresh
    for rel in wh.storage.listing(""):
        wh.storage.delete(rel)
    _publish(Warehouse(root), "new", ids=["n"])
    snap = wh.current()
    assert snap.version == 1 and _ids(wh, snap) == ["n"]


def test_checkpoints_name_build_segments_read_only_when_old_manifests_are_asked_for(
        root, monkeypatch):
    wh = Warehouse(root, checkpoint_every=3)
    for n in range(8):
        _publish(wh, f"b{n}", ids=[f"r{n}"])
    checkpoint = json.loads(wh.storage.read(log.checkpoint_name(6)))
    assert "builds" not in checkpoint and checkpoint["build_segments"] == [3, 6]
    assert [b["build_id"] for b in json.loads(wh.storage.read(log.segment_name(6)))["builds"]] \
        == ["b3", "b4", "b5"]
    reads = []
    real = type(wh.storage).read
    monkeypatch.setattr(type(wh.storage), "read", lambda self, rel: (reads.append(rel),
                                                                     real(self, rel))[1])
    fresh = Warehouse(root)
    snap = fresh.current()
    base = fresh.snapshot_at(8)
    assert [b["build_id"] for b in snap.since(base).builds] == []
    assert [b["build_id"] for b in snap.since(fresh.snapshot_at(6)).builds] == ["b6", "b7"]
    assert not any(r.endswith(".builds.json") for r in reads)  # a writer's checks
    assert [b["build_id"] for b in snap.builds] == [f"b{n}" for n in range(8)]  # history
    assert {r for r in reads if r.endswith(".builds.json")} == {log.segment_name(3),
                                                                log.segment_name(6)}
    assert [v for v, _ in fresh.verify_chain()] == list(range(1, 9))
    edited = json.loads(real(wh.storage, log.segment_name(3)))
    edited["builds"][0]["build_id"] = "forged"
    wh.storage.write(log.segment_name(3), json.dumps(edited).encode())
    with pytest.raises(BrokenChain, match="build segments of checkpoint"):
        list(Warehouse(root).verify_chain())


def test_a_checkpoint_that_differs_from_its_entries_is_refused(root):
    wh = Warehouse(root, checkpoint_every=2)
    for n in range(3):
        _publish(wh, f"b{n}")
    raw = wh.storage.read(log.checkpoint_name(2))
    wh.storage.write(log.checkpoint_name(2), raw.replace(b"b1-rejects", b"b9-rejects"))
    with pytest.raises(BrokenChain, match="differs from the log entries"):
        list(wh.verify_chain())
    with pytest.raises(BrokenChain):
        wh.remove_orphans(grace_s=0)


@pytest.mark.parametrize("renumber", [False, True])
def test_a_stale_entry_at_the_next_number_is_refused(root, renumber):
    wh = Warehouse(root)
    for n in range(2):
        _publish(wh, f"b{n}")
    stale = wh.storage.read(log.entry_name(1))
    if renumber:
        stale = stale.replace(b'"version": 1', b'"version": 3')
    wh.storage.write(log.entry_name(3), stale)
    match = "does not follow" if renumber else "says it is version 1"
    with pytest.raises(BrokenChain, match=f"00000000000000000003.json {match}"):
        Warehouse(root).current()
    with pytest.raises(BrokenChain):
        _publish(wh, "b2")


def _race(writer) -> None:
    threads = [threading.Thread(target=writer, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_racing_writers_lose_no_build_and_recheck_on_every_conflict(root):
    """Two writers without the lock commit N builds each, meeting before each build's first
    check so that they race for the same version: every build lands in its own entry, and each
    check ran again against the very snapshot its commit followed."""
    n, meet = 6, threading.Barrier(2, timeout=60)
    seen: dict[str, list[int]] = {}

    def check(snap, build_id):
        seen.setdefault(build_id, []).append(snap.version)
        if len(seen[build_id]) == 1:
            meet.wait()

    def writer(name: str):
        wh = Warehouse(root, serialise_writers=False)
        for k in range(n):
            _publish(wh, f"{name}{k}", ids=[f"{name}{k}"],
                     check=lambda snap, b=f"{name}{k}": check(snap, b))

    _race(writer)
    wh = Warehouse(root)
    snap = wh.current()
    assert snap.version == 2 * n and len(_entries(wh)) == 2 * n
    assert sorted(b["build_id"] for b in snap.builds) == sorted(seen)
    for build in snap.builds:  # the last check saw the parent this build was committed on
        assert seen[build["build_id"]][-1] == build["snapshot"] - 1
    assert sum(len(v) for v in seen.values()) >= 2 * n + n  # a conflict in every round
    assert sorted(_ids(wh)) == sorted(seen)
    assert [v for v, _ in wh.verify_chain()] == list(range(1, 2 * n + 1))


def test_racing_writers_publish_no_row_twice(root):
    """Both writers publish the same rows, racing for each batch: publish_new_rows drops what
    the other one committed first, found by the check it re-runs after the conflict."""
    batches = [[f"r{b}-{i}" for i in range(4)] for b in range(4)]
    meet, checks = threading.Barrier(2, timeout=60), []

    def writer(name: str):
        wh = Warehouse(root, serialise_writers=False)
        for k, ids in enumerate(batches):
            def published(snap, ids=ids, build=f"{name}{k}"):
                checks.append(build)
                if checks.count(build) == 1:
                    meet.wait()
                return set(_ids(wh, snap)) & set(ids)

            publish_new_rows(
                wh, f"{name}{k}", lambda drop, ids=ids: (
                    {"rejects": _rejects([i for i in ids if i not in drop])}
                    if set(ids) - drop else None),
                new_build("test", build_id=f"{name}{k}"), published, attempts=10)

    _race(writer)
    wh = Warehouse(root)
    assert sorted(_ids(wh)) == sorted(i for batch in batches for i in batch)  # each once
    assert len(checks) > 2 * len(batches)  # the losers checked again
    assert not [rel for rel in wh.storage.listing("tables")
                if rel not in wh.current().tables["rejects"]]  # refused uploads deleted


def test_cleanup_removes_only_unreferenced_parts_after_the_grace_period(root, tmp_path):
    wh = Warehouse(root)
    for n in range(2):
        _publish(wh, f"b{n}")
    live = set(wh.current().tables["rejects"])
    orphan = tmp_path / "orphan.parquet"
    pq.write_table(_rejects(["o"]), orphan)
    wh.storage.upload(orphan, "tables/rejects/unknown-0000.parquet")
    assert wh.remove_orphans() == 0  # unreferenced, but only just written
    assert wh.storage.exists("tables/rejects/unknown-0000.parquet")
    assert wh.remove_orphans(grace_s=0) == 1
    assert not wh.storage.exists("tables/rejects/unknown-0000.parquet")
    assert all(wh.storage.exists(rel) for rel in live) and len(_ids(wh)) == 2


def test_mvp_verify_checks_every_part_against_its_record(root):
    from warehouse.verify import verify
    wh = Warehouse(root)
    for n in range(2):
        _publish(wh, f"b{n}")
    report = verify(wh)
    assert report.passed and report.ok == 2 and report.version == 2
    rel = wh.current().tables["rejects"][0]
    data = bytearray(wh.storage.read(rel))
    data[len(data) // 2] ^= 0xFF  # same size: only the hash can tell
    wh.storage.write(rel, bytes(data))
    report = verify(wh)
    assert not report.passed and report.bad == [("rejects", rel, "sha256 differs from the "
                                                                 "recorded one")]


@pytest.mark.parametrize("point", ["test-before-publish", "test-after-upload"])
def test_a_publish_killed_before_its_commit_is_never_seen_and_cleaned_up(root, point):
    wh = Warehouse(root)
    _publish(wh, "b0")
    env = {**os.environ, "MVP_FAULT": point,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", KILLED_PUBLISH, root], env=env, cwd=ROOT,
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert wh.current().version == 1 and _ids(wh) == ["x"]
    uploaded = point == "test-after-upload"
    assert ("tables/rejects/killed-rejects.parquet" in wh.storage.listing("tables")) == uploaded
    # its staging folder lost its live marker: the build is known dead, its part goes at once
    assert wh.remove_orphans() == int(uploaded)
    assert list(wh.storage.listing("tables")) == wh.current().tables["rejects"]
    _publish(wh, "killed", ids=["k"])  # the rerun completes the work
    assert wh.current().version == 2 and sorted(_ids(wh)) == ["k", "x"]
