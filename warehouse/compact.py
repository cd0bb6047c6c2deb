"""Compaction: a table's small parts (one per extraction shard, ingest or vocabulary build) merged
into parts of about `target_bytes`, sorted by the table's grouping columns, and committed as one
version that adds the merged parts and removes the small ones. Readers see the same rows before
and after; the replaced files stay for time travel until `remove_orphans` vacuums them once the
compaction is older than its grace period."""
from __future__ import annotations

import uuid

import pyarrow as pa

from warehouse.catalog import open_duckdb
from warehouse.publish import new_build, write_part
from warehouse.schemas import TABLES, sort_columns
from warehouse.store import Snapshot, Warehouse

TARGET_BYTES = 256 << 20  # delta-rs's and Spark's optimize aim at parts of this order


def plan_bins(snapshot: Snapshot, table: str, target_bytes: int) -> list[list[str]]:
    """Groups of consecutive small parts (under 3/4 of the target) of up to about
    `target_bytes` together; only groups of two or more are worth rewriting."""
    bins, current, size = [], [], 0
    for rel in snapshot.tables.get(table, []):
        part_size = snapshot.parts.get(rel, {}).get("size") or 0
        if part_size >= 0.75 * target_bytes:  # already large: it ends the group before it
            bins.append(current)
            current, size = [], 0
            continue
        if current and size + part_size > target_bytes:
            bins.append(current)
            current, size = [], 0
        current.append(rel)
        size += part_size
    bins.append(current)
    return [b for b in bins if len(b) >= 2]


def _merged(wh: Warehouse, rels: list[str], table: str) -> pa.Table:
    """The parts' rows sorted by the table's grouping columns, stably: rows of one group keep
    the order they were written in (part by part, row by row). Read by DuckDB, which reads
    every part the warehouse's writers produce (pyarrow refuses an all-null fixed-size list)."""
    files = [wh.absolute(rel) for rel in rels]
    order = ", ".join([*sort_columns(table), "list_position($1, filename)", "file_row_number"])
    with open_duckdb(wh) as con:
        merged = con.sql(
            f"SELECT * EXCLUDE (filename, file_row_number) FROM read_parquet($1, filename = true, "
            f"file_row_number = true) ORDER BY {order}",
            params=[files]).to_arrow_table()
    return merged.cast(TABLES[table])


def compact_table(warehouse: str | Warehouse, table: str,
                  target_bytes: int = TARGET_BYTES) -> dict:
    """Merge `table`'s small parts; one commit. Returns what it did: parts before and after,
    rows and bytes rewritten, the snapshot (None when there was nothing to merge)."""
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; tables: {', '.join(TABLES)}")
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    snap = wh.current()
    bins = plan_bins(snap, table, target_bytes)
    report = {"table": table, "parts_before": len(snap.tables.get(table, [])),
              "parts_merged": sum(len(b) for b in bins), "parts_written": len(bins),
              "bytes_merged": sum(snap.parts[r]["size"] for b in bins for r in b), "rows": 0,
              "snapshot": None}
    if not bins:
        report["parts_after"] = report["parts_before"]
        return report
    build_id = f"compact-{table.replace('_', '-')}-{uuid.uuid4().hex[:12]}"
    with wh.staging(build_id) as folder:
        staged = []
        for n, rels in enumerate(bins):
            merged = _merged(wh, rels, table)
            report["rows"] += merged.num_rows
            staged.append(folder / f"{build_id}-{n}.parquet")
            write_part(merged, staged[-1])
        build = new_build("compact", build_id=build_id,
                          params={"table": table, "target_bytes": target_bytes},
                          inputs={"parts": report["parts_merged"],
                                  "bytes": report["bytes_merged"]},
                          counts={"rows": report["rows"], "parts": len(bins)})
        done = wh.publish({table: staged}, build, removed={table: [r for b in bins for r in b]})
    report["snapshot"] = done.version
    report["parts_after"] = len(done.tables[table])
    return report


def compact(warehouse: str | Warehouse, tables: list[str] | None = None,
            target_bytes: int = TARGET_BYTES) -> list[dict]:
    """Compact each of `tables` (default: all), one commit per table that had small parts."""
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    return [compact_table(wh, t, target_bytes) for t in (tables or list(TABLES))]
