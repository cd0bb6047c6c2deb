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


def dataset_summary(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    """Per dataset: images, captions, regions, questions."""
    return con.execute("""
        WITH i AS (SELECT dataset, count(*) n FROM images GROUP BY ALL),
             c AS (SELECT i.dataset, count(*) n FROM captions c JOIN images i
                     ON c.image_id = i.id GROUP BY ALL),
             r AS (SELECT i.dataset, count(*) n FROM regions r JOIN images i
                     ON r.image_id = i.id GROUP BY ALL),
             q AS (SELECT i.dataset, count(*) n FROM questions q JOIN images i
                     ON q.image_id = i.id GROUP BY ALL)
        SELECT i.dataset, i.n, coalesce(c.n, 0), coalesce(r.n, 0), coalesce(q.n, 0)
        FROM i LEFT JOIN c USING (dataset) LEFT JOIN r USING (dataset)
        LEFT JOIN q USING (dataset) ORDER BY i.dataset""").fetchall()


def top_labels(con: duckdb.DuckDBPyConnection, limit: int = 10) -> list[tuple]:
    return con.execute("SELECT label, count(*) n FROM regions WHERE label IS NOT NULL "
                       "GROUP BY label ORDER BY n DESC, label LIMIT ?", [limit]).fetchall()
