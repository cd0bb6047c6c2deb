"""Merge a staged build against a snapshot with DuckDB: drop duplicate ids, skip rows already
present, reject rows whose image is unknown or whose box leaves its image, and write what is
accepted as new part files in a local folder, ready to publish. Every staged row gets exactly
one outcome, so the counts add up."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.catalog import open_duckdb
from warehouse.schemas import IMAGE_CHILDREN, KEYS, TABLES
from warehouse.store import Snapshot, Warehouse

BOX_TOLERANCE_PX = 1.0   # annotation tools round; boxes this close to the edge are clipped
PART_ROWS = 1_000_000    # rows per Parquet part file
MERGE_MEMORY_LIMIT = "128MB"  # DuckDB spills to the staging folder past this
MERGE_ORDER = ("images", "regions", "captions", "questions", "relations", "entailment",
               "referring")


@dataclass
class TableOutcome:
    staged: int = 0
    new: int = 0
    existing: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


def _files_sql(files: list[str], table: str, columns: str = "*") -> str:
    if not files:
        schema = TABLES[table]
        cols = ", ".join(f"NULL::{_duck_type(f.type)} AS {f.name}" for f in schema)
        return f"(SELECT {cols} WHERE false)"
    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    return f"(SELECT {columns} FROM read_parquet([{listed}]))"


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_string(t):
        return "VARCHAR"
    if pa.types.is_int32(t):
        return "INTEGER"
    if pa.types.is_int64(t):
        return "BIGINT"
    if pa.types.is_float32(t):
        return "FLOAT"
    if pa.types.is_fixed_size_list(t):
        return f"{_duck_type(t.value_type)}[{t.list_size}]"
    if pa.types.is_list(t):
        return f"{_duck_type(t.value_type)}[]"
    if pa.types.is_struct(t):
        return "STRUCT(" + ", ".join(f"{f.name} {_duck_type(f.type)}" for f in t) + ")"
    raise TypeError(f"no DuckDB type for {t}")


def _reason_sql(table: str) -> tuple[str, str]:
    """Extra joins and CASE branches (after duplicate/existing) that reject a staged row."""
    if table not in IMAGE_CHILDREN:
        return "", ""
    joins = "LEFT JOIN all_images i ON s.image_id = i.id"
    cases = "WHEN i.id IS NULL THEN 'refers to an unknown or rejected image'\n"
    if table == "regions":
        tol = BOX_TOLERANCE_PX
        cases += (f"WHEN s.x1 < -{tol} OR s.y1 < -{tol} OR s.x2 > i.width + {tol} "
                  f"OR s.y2 > i.height + {tol} THEN 'box outside the image'\n"
                  "WHEN least(s.x2, i.width) <= greatest(s.x1, 0) OR "
                  "least(s.y2, i.height) <= greatest(s.y1, 0) THEN 'box has zero area'\n")
    if table == "relations":
        joins += (" LEFT JOIN all_regions rs ON s.subject_id = rs.region_id"
                  " LEFT JOIN all_regions ro ON s.object_id = ro.region_id")
        cases += ("WHEN rs.region_id IS NULL OR ro.region_id IS NULL "
                  "THEN 'relation refers to an unknown or rejected region'\n")
    if table == "referring":
        joins += " LEFT JOIN all_regions rr ON s.region_id = rr.region_id"
        cases += ("WHEN rr.region_id IS NULL "
                  "THEN 'referring expression refers to an unknown or rejected region'\n"
                  "WHEN rr.image_id <> s.image_id "
                  "THEN 'referring expression refers to a region of another image'\n")
    return joins, cases


def _select_accepted(table: str) -> str:
    cols = [f.name for f in TABLES[table]]
    if table == "regions":  # clip boxes that overshoot by less than the tolerance
        clip = {"x1": "greatest(x1, 0)", "y1": "greatest(y1, 0)",
                "x2": "least(x2, _width)", "y2": "least(y2, _height)"}
        select = ", ".join(f"CAST({clip[c]} AS FLOAT) AS {c}" if c in clip else c for c in cols)
    else:
        select = ", ".join(cols)
    order = "image_id, " if "image_id" in cols else ""
    return (f"SELECT {select} FROM outcome WHERE _reason IS NULL AND NOT _existing "
            f"ORDER BY {order}{KEYS[table]}")


def _write_parts(con, sql: str, out_dir: Path, table: str, ingest_id: str) -> list[Path]:
    schema = TABLES[table]
    batches = con.sql(sql).to_arrow_reader(65_536)
    parts, writer, rows_in_part = [], None, 0
    folder = out_dir / table
    folder.mkdir(parents=True, exist_ok=True)
    for batch in batches:
        batch = pa.Table.from_batches([batch]).cast(schema)
        if writer is None or rows_in_part >= PART_ROWS:
            if writer is not None:
                writer.close()
            parts.append(folder / f"{ingest_id}-{len(parts):04d}.parquet")
            writer = pq.ParquetWriter(parts[-1], schema, compression="zstd")
            rows_in_part = 0
        writer.write_table(batch)
        rows_in_part += batch.num_rows
    if writer is not None:
        writer.close()
    return parts


def merge(wh: Warehouse, snap: Snapshot, staged: dict[str, list[str]], ingest_id: str,
          spill_dir: Path, out_dir: Path) -> tuple[dict[str, list[Path]], dict[str, TableOutcome]]:
    """Decide every staged row's outcome against `snap` and write the accepted rows into
    `out_dir/<table>/`. Returns those part files per table and the per-table outcome counts."""
    # bounded memory whatever the build size: DuckDB spills sorts and joins past the limit
    con = open_duckdb(wh, {"memory_limit": MERGE_MEMORY_LIMIT,
                          "temp_directory": str(spill_dir)})  # a path, never SQL text
    con.execute("SET preserve_insertion_order = false")
    new_parts: dict[str, list[Path]] = {}
    outcomes: dict[str, TableOutcome] = {}
    con.execute("CREATE TEMP TABLE all_images AS SELECT id, width, height FROM "
                + _files_sql(wh.files("images", snap), "images", "id, width, height"))
    con.execute("CREATE TEMP TABLE all_regions AS SELECT region_id, image_id FROM "
                + _files_sql(wh.files("regions", snap), "regions", "region_id, image_id"))
    merge_rejects = []
    for table in MERGE_ORDER:
        if not staged.get(table):
            continue
        key = KEYS[table]
        joins, cases = _reason_sql(table)
        extra = ", i.width AS _width, i.height AS _height" if table == "regions" else ""
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE outcome AS
            WITH s AS (
                SELECT *, row_number() OVER (PARTITION BY {key} ORDER BY _seq) AS _n
                FROM {_files_sql(staged[table], table)}),
            e AS {_files_sql(wh.files(table, snap), table, key)}
            SELECT s.*{extra}, e.{key} IS NOT NULL AND s._n = 1 AS _existing,
                CASE WHEN s._n > 1 THEN 'duplicate id'
                     WHEN e.{key} IS NOT NULL THEN NULL
                     {cases}
                     ELSE NULL END AS _reason
            FROM s LEFT JOIN e ON s.{key} = e.{key} {joins}""")
        out = TableOutcome()
        for reason, existing, n in con.execute(
                "SELECT _reason, _existing, count(*) FROM outcome GROUP BY ALL").fetchall():
            out.staged += n
            if reason is not None:
                out.rejected[reason] = n
            elif existing:
                out.existing += n
            else:
                out.new += n
        outcomes[table] = out
        new_parts[table] = _write_parts(con, _select_accepted(table), out_dir, table, ingest_id)
        if out.rejected:
            merge_rejects.append(con.sql(f"""
                SELECT md5(concat_ws(chr(31), dataset, _source_file, _record_ref, _reason))[:16]
                         AS id, dataset, _source_file AS source_file, _record_ref AS record_ref,
                       _reason AS reason,
                       left(to_json(struct_pack({', '.join(f.name for f in TABLES[table])}))::VARCHAR,
                            2000) AS raw,
                       '{ingest_id}' AS ingest_id, _seq
                FROM outcome WHERE _reason IS NOT NULL""").to_arrow_table())
        if table == "images":
            con.execute("INSERT INTO all_images SELECT id, width, height FROM outcome "
                        "WHERE _reason IS NULL AND NOT _existing")
        if table == "regions":
            con.execute("INSERT INTO all_regions SELECT region_id, image_id FROM outcome "
                        "WHERE _reason IS NULL AND NOT _existing")
    # rejects: those found while reading plus those found above, each stored once
    reject_cols = [f.name for f in TABLES["rejects"]] + ["_seq"]
    con.execute("CREATE TEMP TABLE all_rejects AS " + (
        f"SELECT {', '.join(reject_cols)} FROM {_files_sql(staged['rejects'], 'rejects')}"
        if staged.get("rejects") else
        f"SELECT *, 0::BIGINT AS _seq FROM {_files_sql([], 'rejects')}"))
    for i, t in enumerate(merge_rejects):
        con.register(f"mr{i}", t)
        con.execute(f"INSERT INTO all_rejects SELECT * FROM mr{i}")
    existing_rejects = _files_sql(wh.files("rejects", snap), "rejects", "id")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE outcome AS
        SELECT *, false AS _existing, NULL AS _reason FROM all_rejects
        WHERE id NOT IN (SELECT id FROM {existing_rejects})
        QUALIFY row_number() OVER (PARTITION BY id ORDER BY _seq) = 1""")
    new_parts["rejects"] = _write_parts(con, _select_accepted("rejects"), out_dir, "rejects",
                                        ingest_id)
    con.close()
    return new_parts, outcomes


def new_ingest_id() -> str:
    return uuid.uuid4().hex[:12]
