"""Which boxes become region features: an image's regions from the warehouse (annotations first,
then detector boxes by score), capped at `max_regions`; a grid of cells for images without any."""
from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from features.geometry import grid_boxes


@dataclass
class ImageRegions:
    """The regions of one image, best first."""
    region_ids: list[str]
    sources: list[str]                # annotation | detector | grid
    labels: list[str | None]
    scores: list[float | None]
    boxes: np.ndarray                 # [k, 4] float32, image pixels

    def __len__(self) -> int:
        return len(self.region_ids)

    def subset(self, keep: np.ndarray) -> "ImageRegions":
        idx = np.flatnonzero(keep)
        return ImageRegions([self.region_ids[i] for i in idx], [self.sources[i] for i in idx],
                            [self.labels[i] for i in idx], [self.scores[i] for i in idx],
                            self.boxes[idx])


# Annotations are ground truth: all of them rank before detector boxes (their score is null,
# read as 1.0); then by score; region_id breaks ties so the cap is deterministic.
_RANKED = """
SELECT image_id, region_id, source, label, score, x1, y1, x2, y2 FROM (
    SELECT r.*, row_number() OVER (
        PARTITION BY r.image_id
        ORDER BY (r.source = 'annotation') DESC, coalesce(r.score, 1.0) DESC, r.region_id
    ) AS rank
    FROM regions r JOIN _wanted w ON r.image_id = w.image_id)
WHERE rank <= ?
ORDER BY image_id, rank
"""


def stored_regions(con: duckdb.DuckDBPyConnection, image_ids: list[str], max_regions: int
                   ) -> dict[str, ImageRegions]:
    """The top `max_regions` regions of each image that has any in the `regions` table."""
    con.register("_wanted", pa.table({"image_id": pa.array(image_ids, pa.string())}))
    try:
        t = con.sql(_RANKED, params=[max_regions]).to_arrow_table()
    finally:
        con.unregister("_wanted")
    ids = t.column("image_id").to_numpy(zero_copy_only=False)
    if len(ids) == 0:
        return {}
    boxes = np.stack([t.column(c).to_numpy(zero_copy_only=False).astype(np.float32)
                      for c in ("x1", "y1", "x2", "y2")], axis=1)
    region_ids = t.column("region_id").to_pylist()
    sources = t.column("source").to_pylist()
    labels = t.column("label").to_pylist()
    scores = t.column("score").to_pylist()
    # rows are grouped by image: split at the positions where the image id changes
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    return {ids[s]: ImageRegions(region_ids[s:e], sources[s:e], labels[s:e], scores[s:e],
                                 boxes[s:e]) for s, e in zip(starts, ends)}


def grid_regions(image_id: str, width: int, height: int, grid: int) -> ImageRegions:
    n = grid * grid
    return ImageRegions([f"{image_id}#grid{k}" for k in range(n)], ["grid"] * n, [None] * n,
                        [None] * n, grid_boxes(width, height, grid))


def regions_for_images(con: duckdb.DuckDBPyConnection, images: list[tuple[str, int, int]],
                       max_regions: int, grid: int) -> dict[str, ImageRegions]:
    """images: (image_id, width, height). Every image gets its stored regions, else a grid."""
    stored = stored_regions(con, [i for i, _, _ in images], max_regions)
    return {iid: stored.get(iid) or grid_regions(iid, w, h, grid) for iid, w, h in images}
