"""The DuckDB query layer: one view per warehouse table over its current snapshot's parts."""
from __future__ import annotations

import duckdb

from warehouse.macros import define_macros
from warehouse.schemas import TABLES
from warehouse.store import Snapshot, Warehouse

# Statement types a read-only session may run (everything else could write or change state).
READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN", "PRAGMA"}


class ReadOnlyViolation(PermissionError):
    """A statement that could write was refused."""


def connect(warehouse: str | Warehouse, snapshot: Snapshot | None = None
            ) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per table (empty tables get typed empty
    views, so queries work on a new warehouse)."""
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    snap = snapshot or wh.current()
    con = duckdb.connect(config={"threads": 2})
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


def run_read_only(warehouse: str | Warehouse, sql: str, params=None):
    """Execute user SQL that may only read: any statement other than a query is refused before
    it runs, and the connection's configuration is locked so SET cannot undo that."""
    statements = duckdb.extract_statements(sql)
    if len(statements) != 1:
        raise ReadOnlyViolation(f"expected one statement, got {len(statements)}")
    kind = statements[0].type.name
    if kind not in READ_ONLY_STATEMENTS:
        raise ReadOnlyViolation(f"read-only: {kind} statements are not allowed")
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    con = connect(wh)
    # files outside the warehouse's tables are off limits (no reading /etc/passwd via SQL)
    con.execute("SET allowed_directories = ?", [[str(wh.root / "tables") + "/"]])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    rel = con.execute(sql, params or [])
    columns = [d[0] for d in rel.description] if rel.description else []
    return columns, rel.fetchall()


def table_counts(warehouse: str | Warehouse) -> list[tuple[str, int]]:
    con = connect(warehouse)
    try:
        return [(t, con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in TABLES]
    finally:
        con.close()
