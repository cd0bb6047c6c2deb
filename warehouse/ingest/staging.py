"""Append-only staging files of one build, written to Parquet in bounded batches so memory stays
flat. Rows carry `_seq` (read order: the first of two duplicates wins) and `_source_file`,
`_record_ref` (where a reject found at merge time came from)."""
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
    """Buffers rows per table as compact Arrow batches (Python objects only for the last few
    rows) and flushes each table to its own Parquet part files."""

    def __init__(self, directory: Path, flush_rows: int = 50_000, batch_rows: int = 2_000):
        self.directory = directory
        self.flush_rows = flush_rows
        self.batch_rows = batch_rows
        self._rows: dict[str, dict[str, list]] = {}        # table -> columns (Python values)
        self._batches: dict[str, list[pa.RecordBatch]] = {}
        self._parts: dict[str, int] = {}
        directory.mkdir(parents=True, exist_ok=True)

    def add(self, table: str, row: dict) -> None:
        buf = self._rows.setdefault(table, {f.name: [] for f in staged_schema(table)})
        for name, column in buf.items():
            column.append(row.get(name))
        if len(buf["_seq"]) >= self.batch_rows:
            self._seal(table)

    def extend(self, table: str, columns: dict[str, list]) -> None:
        """Append many rows given column-wise (fast path for trusted generators)."""
        self._seal(table)
        n = len(columns["_seq"])
        schema = staged_schema(table)
        arrays = [pa.array(columns.get(f.name, [None] * n), type=f.type) for f in schema]
        self._append(table, pa.RecordBatch.from_arrays(arrays, schema=schema))

    def _seal(self, table: str) -> None:
        buf = self._rows.pop(table, None)
        if buf and buf["_seq"]:
            self._append(table, pa.RecordBatch.from_pydict(buf, schema=staged_schema(table)))

    def _append(self, table: str, batch: pa.RecordBatch) -> None:
        batches = self._batches.setdefault(table, [])
        batches.append(batch)
        if sum(b.num_rows for b in batches) >= self.flush_rows:
            self._flush(table)

    def _flush(self, table: str) -> None:
        batches = self._batches.pop(table, None)
        if not batches:
            return
        n = self._parts.get(table, 0)
        self._parts[table] = n + 1
        folder = self.directory / table
        folder.mkdir(exist_ok=True)
        pq.write_table(pa.Table.from_batches(batches), folder / f"{n:06d}.parquet",
                       compression="zstd")

    def close(self) -> dict[str, list[str]]:
        for table in list(self._rows):
            self._seal(table)
        for table in list(self._batches):
            self._flush(table)
        return {t: sorted(str(p) for p in (self.directory / t).glob("*.parquet"))
                for t in TABLES if (self.directory / t).is_dir()}
