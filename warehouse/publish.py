"""Publishing a build: its manifest, and its tables written as part files into a staging folder
and committed as one snapshot, refused by its check when another writer published the same rows
first (a concurrent run, or an earlier run that died after its publish)."""
from __future__ import annotations

import time
from collections.abc import Callable, Collection, Hashable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.faults import fault_point
from warehouse.store import Snapshot, Warehouse, WarehouseError
from warehouse.version import code_version


class AlreadyPublished(WarehouseError):
    """Raised by a publish check: another writer published (some of) this build's rows first.
    `keys` names those rows where the build can drop them and publish the rest; empty means the
    whole build is done."""

    def __init__(self, keys: Collection[Hashable] = ()):
        self.keys = frozenset(keys)
        super().__init__(f"{len(self.keys) or 'all'} rows of this build were published by "
                         "another writer")


def utc_timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def new_build(kind: str, **fields) -> dict:
    """A build's manifest: its kind, the given fields (its id, params, inputs, counts...), the
    code version and the time. The commit adds the snapshot version it is published as."""
    return {"kind": kind, **fields, "code_version": code_version(), "time": utc_timestamp()}


def write_part(table: pa.Table, path: str | Path) -> None:
    """One Parquet part file of a table. A vector column is stored plain and uncompressed: float
    bytes neither repeat nor compress much, and leaving both off keeps reading it a memcpy
    (warehouse/vectors.py); other columns get dictionaries and zstd."""
    names = table.schema.names
    pq.write_table(table, path, compression={n: ("none" if n == "vector" else "zstd")
                                             for n in names},
                   use_dictionary=[n for n in names if n != "vector"])


def publish_tables(wh: Warehouse, build_id: str, tables: dict[str, pa.Table], build: dict,
                   check: Callable[[Snapshot], None] | None = None) -> Snapshot:
    """Stage each non-empty table as `<build_id>-<table>.parquet` and publish them with `build`
    as one snapshot (the manifest is published even when every table is empty). `check` runs on
    the snapshot the commit will follow (again after each commit another writer made first) and
    raises (AlreadyPublished) to refuse; nothing is published then."""
    with wh.staging(build_id) as folder:
        staged = {}
        for name, table in tables.items():
            if table.num_rows:
                staged[name] = [folder / f"{build_id}-{name}.parquet"]
                write_part(table, staged[name][0])
        # kill points for tests and the kill matrix: MVP_FAULT=<kind>-before-publish, ...
        fault_point(f"{build['kind']}-before-publish")
        snap = wh.publish(staged, build, check=check)
    fault_point(f"{build['kind']}-after-publish")
    return snap


def publish_new_rows(wh: Warehouse, build_id: str,
                     tables: Callable[[frozenset], dict[str, pa.Table] | None], build: dict,
                     published: Callable[[Snapshot], set], attempts: int = 3
                     ) -> tuple[Snapshot | None, frozenset]:
    """Publish `tables(drop)`, the build's rows without those keyed in `drop` (empty at first),
    so that no row is ever published twice: `published(snapshot)` names the keys of this build's
    rows already in `snapshot`; it runs on the snapshot the commit will follow, and when it names
    new ones they are added to `drop` and the publish is retried. Returns (the snapshot, or None when `tables`
    returns None: nothing left to publish; the keys dropped)."""
    drop: frozenset = frozenset()

    def check(snapshot: Snapshot) -> None:
        if new := set(published(snapshot)) - drop:
            raise AlreadyPublished(new)

    for attempt in range(attempts):
        staged = tables(drop)
        if staged is None:
            return None, drop
        try:
            return publish_tables(wh, f"{build_id}-{attempt}", staged, build, check), drop
        except AlreadyPublished as e:
            drop |= e.keys
    raise WarehouseError(f"build {build_id}: other writers kept publishing the same rows")
