"""Questions users ask of a warehouse, as functions over a catalog connection. User values are
always bound as parameters (`?`), never spliced into SQL text."""
from __future__ import annotations

import duckdb


def images_in_dataset(con: duckdb.DuckDBPyConnection, dataset: str, split: str | None = None
                      ) -> list[tuple]:
    """(id, split, path, width, height) of a dataset's images, optionally one split."""
    return con.execute(
        "SELECT id, split, path, width, height FROM images "
        "WHERE dataset = ? AND (? IS NULL OR split = ?) ORDER BY id",
        [dataset, split, split]).fetchall()


def captions_mentioning(con: duckdb.DuckDBPyConnection, phrase: str, limit: int = 20
                        ) -> list[tuple]:
    """(caption id, image id, text) of captions containing `phrase` (case-insensitive)."""
    return con.execute(
        "SELECT id, image_id, text FROM captions "
        "WHERE contains(lower(text), lower(?)) ORDER BY id LIMIT ?", [phrase, limit]).fetchall()


def images_with_label(con: duckdb.DuckDBPyConnection, label: str) -> list[tuple]:
    """(image id, number of regions with that label) for images that contain `label`."""
    return con.execute(
        "SELECT image_id, count(*) FROM regions WHERE label = lower(?) "
        "GROUP BY image_id ORDER BY image_id", [label]).fetchall()


def rejects_by_reason(con: duckdb.DuckDBPyConnection, dataset: str | None = None
                      ) -> list[tuple]:
    """(dataset, reason, count), largest first."""
    return con.execute(
        "SELECT dataset, reason, count(*) AS n FROM rejects WHERE ? IS NULL OR dataset = ? "
        "GROUP BY ALL ORDER BY n DESC, reason", [dataset, dataset]).fetchall()


# the per-image tables dataset_summary counts, in its column order (after images)
SUMMARY_TABLES = ("captions", "regions", "questions", "entailment", "referring")


def dataset_summary(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    """Per dataset: images, then the rows of each SUMMARY_TABLES table on its images."""
    counts = "".join(f""",
             n_{t} AS (SELECT i.dataset, count(*) n FROM {t} x JOIN images i
                     ON x.image_id = i.id GROUP BY ALL)""" for t in SUMMARY_TABLES)
    columns = "".join(f", coalesce(n_{t}.n, 0)" for t in SUMMARY_TABLES)
    joins = " ".join(f"LEFT JOIN n_{t} USING (dataset)" for t in SUMMARY_TABLES)
    return con.execute(f"""
        WITH i AS (SELECT dataset, count(*) n FROM images GROUP BY ALL){counts}
        SELECT i.dataset, i.n{columns}
        FROM i {joins} ORDER BY i.dataset""").fetchall()


def top_labels(con: duckdb.DuckDBPyConnection, limit: int = 10) -> list[tuple]:
    return con.execute("SELECT label, count(*) n FROM regions WHERE label IS NOT NULL "
                       "GROUP BY label ORDER BY n DESC, label LIMIT ?", [limit]).fetchall()
