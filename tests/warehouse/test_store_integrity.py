"""Commits link to their parent and record their parts' size and sha256: a stale or misplaced
log entry is refused instead of read, cleanup never deletes a part that any commit references, a
changed part is caught (its size on every read, its hash by `mvp verify`), and warehouses in the
old full-copy format (`_snapshots/`) are read and extended."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT

from warehouse import store
from warehouse.catalog import connect
from warehouse.ingest.build import ingest
from warehouse.store import Warehouse, WarehouseError


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Three ingests, so snapshots 1..3 each add parts to every table."""
    root = tmp_path_factory.mktemp("integrity")
    for n in (4, 8, 12):
        ingest("shapes", root / "img", root / "wh", n_images=n, workers=1)
    return root / "wh"


@pytest.fixture
def wh(base, tmp_path):
    shutil.copytree(base, tmp_path / "wh")
    return tmp_path / "wh"


def _entry(wh, version: int) -> Path:
    return wh / "_log" / f"{version:020d}.json"


def _legacy_file(wh, version: int) -> Path:
    return wh / "_snapshots" / f"{version:08d}.json"


def _live(wh) -> set[str]:
    return {p for parts in Warehouse(wh).current().tables.values() for p in parts}


def _place_copy(wh, of: int, at: int, renumber: bool, file=_entry) -> None:
    """A stale copy of commit `of` written as commit `at`, as a restore or sync tool might
    leave it; `renumber` also rewrites its version field to match its new name."""
    data = json.loads(file(wh, of).read_text())
    if renumber:
        data["version"] = at
    file(wh, at).write_text(json.dumps(data))


def _rewrite_as_legacy(wh, linked: bool) -> None:
    """Rewrite the log as code before it wrote warehouses: one full copy of the state per commit
    in _snapshots/, with parent links and part records (`linked`) or, older still, without."""
    state = {"tables": {}, "parts": {}, "builds": []}
    parent = None
    (wh / "_snapshots").mkdir()
    for version in range(1, Warehouse(wh).current().version + 1):
        entry = json.loads(_entry(wh, version).read_bytes())
        for table, parts in entry["tables"].items():
            state["tables"][table] = state["tables"].get(table, []) + parts
        state["parts"].update(entry["parts"])
        state["builds"].append(entry["build"])
        data = {"version": version, **state}
        if linked:
            data["parent"] = parent
        else:
            del data["parts"]
        raw = json.dumps(data, indent=1, sort_keys=True).encode()
        _legacy_file(wh, version).write_bytes(raw)
        parent = {"version": version, "sha256": hashlib.sha256(raw).hexdigest()}
    shutil.rmtree(wh / "_log")


def _images(wh) -> int:
    with connect(wh) as con:
        return con.execute("SELECT count(*) FROM images").fetchone()[0]


def _part(wh, table: str) -> Path:
    return Path(Warehouse(wh).files(table)[0])


def _mvp_verify(wh) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", "verify", "--warehouse", str(wh)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("renumber", [False, True])
def test_stale_copy_at_the_next_number_is_refused(wh, tmp_path, renumber):
    live = _live(wh)
    assert _images(wh) == 12
    _place_copy(wh, of=1, at=4, renumber=renumber)
    name = "00000000000000000004.json"
    with pytest.raises(WarehouseError, match=name) as refused:
        Warehouse(wh).current()  # not silently snapshot 1's 4 images
    assert isinstance(refused.value, store.BrokenChain)
    assert len(str(refused.value).splitlines()) == 1
    with pytest.raises(WarehouseError, match=name):
        connect(wh)
    # the next ingest neither cleans up against the stale copy nor publishes on top of it
    with pytest.raises(WarehouseError, match=name):
        ingest("shapes", tmp_path / "img", wh, n_images=16, workers=1)
    with pytest.raises(WarehouseError), Warehouse(wh).lock():
        Warehouse(wh).remove_orphans(grace_s=0)
    assert all((wh / p).is_file() for p in live)
    assert not _entry(wh, 5).exists()

    _entry(wh, 4).unlink()  # repaired: the real newest snapshot is read again
    assert _images(wh) == 12


@pytest.mark.parametrize("at", [5, 9])
def test_stale_copy_ahead_of_a_gap_is_refused(wh, tmp_path, at):
    """Reading follows entries until one is missing, so it never reaches the copy; the chain
    check that lists them all (`mvp verify`, cleanup before every ingest) refuses the gap."""
    live = _live(wh)
    _place_copy(wh, of=1, at=at, renumber=True)
    assert Warehouse(wh).current().version == 3
    with pytest.raises(store.BrokenChain, match=f"{at:020d}.json: its parent .* is missing"):
        list(Warehouse(wh).verify_chain())
    with pytest.raises(WarehouseError, match=f"{at:020d}.json"):
        ingest("shapes", tmp_path / "img", wh, n_images=16, workers=1)
    assert all((wh / p).is_file() for p in live)


@pytest.mark.slow
def test_gap_filled_with_an_old_copy_is_refused(wh, tmp_path):
    live = _live(wh)
    _entry(wh, 2).unlink()
    _place_copy(wh, of=1, at=2, renumber=True)
    with pytest.raises(WarehouseError, match="00000000000000000002.json does not follow "
                                             "00000000000000000001.json"):
        Warehouse(wh).current()
    with pytest.raises(WarehouseError):
        ingest("shapes", tmp_path / "img", wh, n_images=16, workers=1)
    assert all((wh / p).is_file() for p in live)
    assert _mvp_verify(wh).returncode == 1


def test_cleanup_keeps_every_part_any_snapshot_references(wh):
    """The oldest legacy snapshots carry no links, so a renumbered stale copy cannot be told
    from a real commit; cleanup still frees nothing that an older snapshot file references."""
    live = _live(wh)
    _rewrite_as_legacy(wh, linked=False)
    _place_copy(wh, of=1, at=4, renumber=True, file=_legacy_file)
    long_ago = time.time() - 86_400  # a day old: past the grace period, only references count
    for part in (wh / "tables").rglob("*.parquet"):
        os.utime(part, (long_ago, long_ago))
    with Warehouse(wh).lock():
        assert Warehouse(wh).remove_orphans() == 0
    assert all((wh / p).is_file() for p in live)


def test_cleanup_keeps_young_orphans_within_the_grace_period(wh):
    store_ = Warehouse(wh)
    orphan = wh / "tables" / "images" / "unknown-0000.parquet"
    shutil.copyfile(_part(wh, "images"), orphan)
    with store_.lock():
        assert store_.remove_orphans() == 0  # unreferenced, but only just written
    assert orphan.is_file()
    hour_ago = time.time() - store.ORPHAN_GRACE_S - 60
    os.utime(orphan, (hour_ago, hour_ago))
    with store_.lock():
        assert store_.remove_orphans() == 1
    assert not orphan.exists()

    shutil.copyfile(_part(wh, "images"), orphan)
    with store_.lock():
        assert store_.remove_orphans(grace_s=0) == 1
    assert not orphan.exists() and _images(wh) == 12


def test_entries_link_their_parent_and_record_only_their_own_parts(wh, tmp_path):
    previous: set[str] = set()
    for version in (1, 2, 3):
        data = json.loads(_entry(wh, version).read_bytes())
        parent = _entry(wh, version - 1).read_bytes() if version > 1 else None
        assert data["parent"] == (parent and {"version": version - 1,
                                              "sha256": hashlib.sha256(parent).hexdigest()})
        added = {p for parts in data["tables"].values() for p in parts}
        assert added and set(data["parts"]) == added and not added & previous
        assert data["build"]["snapshot"] == version
        previous |= added
    snap = Warehouse(wh).current()
    assert set(snap.parts) == _live(wh)
    for rel, record in snap.parts.items():
        assert record == {"size": (wh / rel).stat().st_size,
                          "sha256": hashlib.sha256((wh / rel).read_bytes()).hexdigest()}
    # a part published from a staging folder is recorded too
    store_ = Warehouse(wh)
    with store_.staging("test-publish") as folder:
        part = folder / "test-publish.parquet"
        shutil.copyfile(_part(wh, "images"), part)
        snap = store_.publish({"images": [part]}, {"kind": "test"})
    assert snap.parts["tables/images/test-publish.parquet"] == \
        snap.parts[Warehouse(wh).relative(_part(wh, "images"))]
    assert Warehouse(wh).current().version == 4


def test_unlinked_legacy_snapshots_are_read_reported_unverified_and_extended(wh, tmp_path):
    _rewrite_as_legacy(wh, linked=False)
    assert _images(wh) == 12
    from warehouse.verify import verify
    report = verify(wh)
    assert report.passed and report.ok == 0 and len(report.unverified) == len(_live(wh))
    ingest("shapes", tmp_path / "img", wh, n_images=16, workers=1)
    snap = Warehouse(wh).current()
    assert snap.version == 4 and snap.parent["version"] == 3
    assert _images(wh) == 16
    report = verify(wh)
    assert report.passed and report.ok == len(snap.parts) > 0
    # a legacy snapshot restored after the log took over is a stale copy
    _place_copy(wh, of=3, at=4, renumber=True, file=_legacy_file)
    with pytest.raises(store.BrokenChain, match="both claim version 4"):
        list(Warehouse(wh).verify_chain())


def test_linked_legacy_warehouse_grows_its_log_from_the_newest_snapshot(wh, tmp_path):
    before = Warehouse(wh).current()
    _rewrite_as_legacy(wh, linked=True)
    legacy = Warehouse(wh).current()
    assert (legacy.version, legacy.tables, legacy.parts) == (3, before.tables, before.parts)
    assert [b["snapshot"] for b in legacy.builds] == [1, 2, 3]
    assert Warehouse(wh).manifest_path(3) == str(_legacy_file(wh, 3))
    ingest("shapes", tmp_path / "img", wh, n_images=16, workers=1)
    snap = Warehouse(wh).current()
    assert snap.version == 4 and _images(wh) == 16 and not _legacy_file(wh, 4).exists()
    # the first entry links to the newest legacy snapshot's bytes
    assert snap.parent == {"version": 3,
                           "sha256": hashlib.sha256(_legacy_file(wh, 3).read_bytes()).hexdigest()}
    assert Warehouse(wh).manifest_path(4) == str(_entry(wh, 4))
    assert [v for v, _ in Warehouse(wh).verify_chain()] == [1, 2, 3, 4]
    from warehouse.verify import verify
    report = verify(wh)
    assert report.passed and report.ok == len(snap.parts) and not report.unverified
    # a legacy file edited after the log grew from it breaks the chain
    _legacy_file(wh, 3).write_text(_legacy_file(wh, 3).read_text() + " ")
    with pytest.raises(store.BrokenChain, match="log entry 00000000000000000004.json"):
        Warehouse(wh).current()


@pytest.mark.slow
def test_clean_warehouse_verifies(wh):
    proc = _mvp_verify(wh)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 bad" in proc.stdout and "0 unverified" in proc.stdout


@pytest.mark.slow
def test_flipped_byte_is_reported_by_mvp_verify(wh):
    part = _part(wh, "captions")
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the hash can tell
    part.write_bytes(bytes(data))
    proc = _mvp_verify(wh)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    bad = [line for line in proc.stdout.splitlines() if line.startswith("BAD")]
    assert len(bad) == 1 and "captions" in bad[0] and part.name in bad[0]
    assert "tables: captions" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("change", ["truncate", "extend"])
def test_part_of_another_size_is_refused_on_read(wh, change):
    part = _part(wh, "captions")
    data = part.read_bytes()
    part.write_bytes(data[:-1] if change == "truncate" else data + b"\0")
    with pytest.raises(WarehouseError, match=part.name) as refused:
        connect(wh)
    assert "captions" in str(refused.value)
    proc = _mvp_verify(wh)
    assert proc.returncode == 1 and "captions" in proc.stdout
