"""Reading warehouses written before the commit log: `_snapshots/<n:08d>.json`, one full copy of
the state per commit. They are never written any more; the newest one is the base the log grows
from, and the whole chain still counts for `mvp verify` and cleanup."""
from __future__ import annotations

from collections.abc import Iterator

from warehouse.schemas import TABLES
from warehouse.snapshot import Snapshot, check_link, parse, sha256
from warehouse.storage import Storage

FOLDER = "_snapshots"


def name(version: int) -> str:
    return f"{FOLDER}/{version:08d}.json"


def versions(storage: Storage) -> list[int]:
    return sorted(int(n[:-5]) for n in storage.names(FOLDER)
                  if n.endswith(".json") and n[:-5].isdigit())


def _load(storage: Storage, version: int) -> tuple[dict, bytes]:
    raw = storage.read(name(version))
    if raw is None:
        raise FileNotFoundError(name(version))
    return parse(raw, f"snapshot {name(version)}"), raw


def _check(version: int, data: dict, parent: tuple[dict, bytes] | None) -> None:
    check_link(f"snapshot {version:08d}.json", f"{version - 1:08d}.json", version, data,
               None if parent is None else (parent[0], sha256(parent[1])))


def to_snapshot(data: dict, raw: bytes) -> Snapshot:
    tables = {t: list(data["tables"].get(t, [])) for t in TABLES}
    return Snapshot(data["version"], tables, list(data.get("builds", [])),
                    dict(data.get("parts", {})), data.get("parent"), sha256(raw))


def newest(storage: Storage) -> Snapshot | None:
    """The newest legacy snapshot after checking its link to its parent (two files); None if
    there are none."""
    found = versions(storage)
    if not found:
        return None
    version = found[-1]
    data, raw = _load(storage, version)
    parent = _load(storage, version - 1) if version - 1 in found else None
    _check(version, data, parent)
    return to_snapshot(data, raw)


def chain(storage: Storage) -> Iterator[tuple[int, dict, bytes]]:
    """(version, data, bytes) of every legacy snapshot, oldest first, after checking its
    link to the one before; BrokenChain at the first bad link."""
    parent, parent_version = None, None
    for version in versions(storage):
        data, raw = _load(storage, version)
        # after a gap the parent is missing, which the check refuses
        _check(version, data, parent if parent_version == version - 1 else None)
        parent, parent_version = (data, raw), version
        yield version, data, raw
