"""Append-only staging files of one build: rows go to Parquet in bounded batches so memory stays
flat however large the input is. Each staged row carries where it came from (`_seq` orders rows
as read, so the first of two duplicates wins; `_source_file`, `_record_ref` point back to the
input for rejects found later at merge time)."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.schemas import TABLES

LINEAGE = pa.schema([("_seq", pa.int64()), ("_source_file", pa.string()),
                     ("_record_ref", pa.string())])


def staged_schema(table: str) -> pa.Schema:
    schema = TABLES[table]
    for f in LINEAGE:
        schema = schema.append(f)
    return schema


class StagingWriter:
    """Buffers rows per table and flushes each table to its own Parquet part files."""

    def __init__(self, directory: Path, flush_rows: int = 50_000):
        self.directory = directory
        self.flush_rows = flush_rows
        self._buffers: dict[str, dict[str, list]] = {}
        self._parts: dict[str, int] = {}
        self.rows_written: dict[str, int] = {t: 0 for t in TABLES}
        directory.mkdir(parents=True, exist_ok=True)

    def add(self, table: str, row: dict) -> None:
        buf = self._buffers.setdefault(table, {f.name: [] for f in staged_schema(table)})
        for name, column in buf.items():
            column.append(row.get(name))
        if len(buf["_seq"]) >= self.flush_rows:
            self._flush(table)

    def extend(self, table: str, columns: dict[str, list]) -> None:
        """Append many rows given column-wise (fast path for trusted generators)."""
        n = len(columns["_seq"])
        buf = self._buffers.setdefault(table, {f.name: [] for f in staged_schema(table)})
        for name, column in buf.items():
            column.extend(columns.get(name, [None] * n))
        if len(buf["_seq"]) >= self.flush_rows:
            self._flush(table)

    def _flush(self, table: str) -> None:
        buf = self._buffers.pop(table, None)
        if not buf or not buf["_seq"]:
            return
        batch = pa.Table.from_pydict(buf, schema=staged_schema(table))
        n = self._parts.get(table, 0)
        self._parts[table] = n + 1
        folder = self.directory / table
        folder.mkdir(exist_ok=True)
        pq.write_table(batch, folder / f"{n:06d}.parquet", compression="zstd")
        self.rows_written[table] += batch.num_rows

    def close(self) -> dict[str, list[str]]:
        for table in list(self._buffers):
            self._flush(table)
        return {t: sorted(str(p) for p in (self.directory / t).glob("*.parquet"))
                for t in TABLES if (self.directory / t).is_dir()}
