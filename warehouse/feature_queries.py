"""Questions about stored region vectors, over a catalog connection (the SQL is the
`nearest_regions` macro in warehouse/macros.py, callable from `mvp sql` too)."""
from __future__ import annotations

import duckdb


def nearest_regions(con: duckdb.DuckDBPyConnection, feature_set: str, region_id: str,
                    k: int = 10) -> list[tuple]:
    """(region id, image id, label, cosine) of the k regions of the feature set whose vectors
    are closest to `region_id`'s by cosine, most similar first."""
    return con.execute("SELECT * FROM nearest_regions(?, ?, ?)",
                       [feature_set, region_id, k]).fetchall()
