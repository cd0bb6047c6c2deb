"""The DuckDB query layer: one view per warehouse table over its current snapshot's parts."""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import duckdb

from warehouse.macros import define_macros
from warehouse.schemas import TABLES
from warehouse.store import Snapshot, Warehouse

# Limits of a read-only session (`mvp sql --timeout/--memory-limit`).
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_MEMORY_LIMIT = "2GB"
BATCH_ROWS = 10_000


class ReadOnlyViolation(PermissionError):
    """A statement that could write was refused."""


class QueryTimeout(TimeoutError):
    """A read-only query ran past its time limit."""


def open_duckdb(wh: Warehouse, config: dict | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection that can open the warehouse's part files by the names
    `Warehouse.files` gives: on an object store through the warehouse's own fsspec file system
    (DuckDB's httpfs extension cannot be installed here, and this way one set of credentials
    and endpoint serves both). `config` adds DuckDB settings."""
    con = duckdb.connect(config={"threads": 2, **(config or {})})
    if not wh.storage.is_local:
        con.register_filesystem(wh.storage.fs)
    return con


def connect(warehouse: str | Warehouse, snapshot: Snapshot | None = None,
            config: dict | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per table (empty tables get typed empty
    views, so queries work on a new warehouse). `config` adds DuckDB settings."""
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    snap = snapshot or wh.current()
    con = open_duckdb(wh, config)
    for table, schema in TABLES.items():
        files = wh.files(table, snap)
        if files:
            listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet([{listed}])")
        else:
            con.register(f"_empty_{table}", schema.empty_table())
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM _empty_{table}")
    define_macros(con)
    return con


def connect_sandboxed(warehouse: str | Warehouse, temp_dir: str,
                      timeout: float = DEFAULT_TIMEOUT_S, memory_limit: str = DEFAULT_MEMORY_LIMIT
                      ) -> duckdb.DuckDBPyConnection:
    """A catalog connection that can read the current snapshot's part files and no other file,
    cannot create files, load extensions or change its settings, spills into `temp_dir`, and
    stops a query after `timeout` seconds (0: never) or when it needs more than
    `memory_limit`."""
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds, got {timeout}")
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    snap = wh.current()
    con = connect(wh, snap, config={
        "memory_limit": memory_limit,
        # counts until the last row is fetched, so a slow reader of the stream counts too
        "max_execution_time": max(1, round(timeout * 1000)) if timeout else 0,
        # DuckDB's default spill folder is <cwd>/.tmp; spills go to a private folder instead
        "temp_directory": temp_dir,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "python_enable_replacements": False,  # SQL cannot scan the caller's Python variables
    })
    # Exact part files (local paths, or URLs under the bucket prefix), not directories: no other
    # file (orphan parts, the log, /etc, another prefix) can be read and no new file created.
    # DuckDB would still let COPY overwrite these very files, which is why only SELECT
    # statements reach this connection.
    parts = [f for table in TABLES for f in wh.files(table, snap)]
    if parts:
        con.execute("SET allowed_paths = ?", [parts])  # only settable while access is on
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _select_only(sql: str) -> duckdb.Statement:
    statements = duckdb.extract_statements(sql)
    if len(statements) != 1:
        raise ReadOnlyViolation(f"expected one statement, got {len(statements)}")
    kind = statements[0].type.name
    # EXPLAIN ANALYZE runs what it wraps, PRAGMA and CALL can change state: queries only
    if kind != "SELECT":
        raise ReadOnlyViolation(f"read-only: {kind} statements are not allowed, only queries")
    return statements[0]


def stream_read_only(warehouse: str | Warehouse, sql: str, params=None, *,
                     timeout: float = DEFAULT_TIMEOUT_S,
                     memory_limit: str = DEFAULT_MEMORY_LIMIT, batch_rows: int = BATCH_ROWS
                     ) -> tuple[list[str], Iterator[list[tuple]]]:
    """Run one user query in a sandboxed connection (connect_sandboxed): returns the column
    names and an iterator of row batches, fetched as they are consumed. The connection closes
    when the iterator is exhausted or closed. Anything but a query is refused before it runs."""
    statement = _select_only(sql)
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    batches = _batches(wh, statement, params, timeout, memory_limit, batch_rows)
    columns = next(batches)  # opens the connection and starts the query
    return columns, batches


def _batches(wh, statement, params, timeout, memory_limit, batch_rows):
    """Yields the column names, then row batches; cleans up however it is left."""
    temp_dir = tempfile.mkdtemp(prefix="mvp-sql-")
    try:
        with connect_sandboxed(wh, temp_dir, timeout, memory_limit) as con:
            result = con.execute(statement, params or [])
            yield [d[0] for d in result.description]
            while batch := result.fetchmany(batch_rows):
                yield batch
    except duckdb.InterruptException as e:
        if timeout and "execution time" in str(e):
            raise QueryTimeout(f"query exceeded {timeout:g} s") from None
        raise
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def run_read_only(warehouse: str | Warehouse, sql: str, params=None, *,
                  timeout: float = DEFAULT_TIMEOUT_S, memory_limit: str = DEFAULT_MEMORY_LIMIT
                  ) -> tuple[list[str], list[tuple]]:
    """stream_read_only with all rows in one list."""
    columns, batches = stream_read_only(warehouse, sql, params, timeout=timeout,
                                        memory_limit=memory_limit)
    return columns, [row for batch in batches for row in batch]


def table_counts(warehouse: str | Warehouse) -> list[tuple[str, int]]:
    with connect(warehouse) as con:
        return [(t, con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in TABLES]
