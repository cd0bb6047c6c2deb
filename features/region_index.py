"""Nearest regions through a vector index (warehouse/vector_index.py) instead of a scan of every
region of the feature set: the index is built once per feature set and set of live
region_features parts (new regions give a new one), beside the warehouse like the training
cache, in batches (memory of one batch plus the index), and renamed into place whole."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.feature_sets import require_feature_set
from warehouse import vectors
from warehouse.schemas import TABLES
from warehouse.store import Warehouse
from warehouse.vector_index import VectorIndex

FORMAT = 1
BATCH = 65_536   # regions read at a time
ID_COLUMNS = ["region_id", "image_id", "label"]


def index_folder(wh: Warehouse, feature_set: str, root=None) -> Path:
    """Where the index of `feature_set` over the current region_features parts lives."""
    record = {"format": FORMAT, "feature_set": feature_set,
              "parts": sorted(wh.current().tables.get("region_features", []))}
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    return Path(root or wh.local_dir() / "_cache" / "region_index") / key


def build_region_index(warehouse, feature_set: str, root=None) -> Path:
    """The folder holding the index (index.faiss), the regions' ids in index order
    (regions.parquet) and their vectors as stored (vectors.bin, for the query's own vector);
    built unless it exists."""
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    folder = index_folder(wh, feature_set, root)
    if (folder / "index.faiss").exists():
        return folder
    spec = require_feature_set(wh, feature_set)
    staging = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        scanner = wh.dataset("region_features", TABLES["region_features"]).scanner(
            columns=ID_COLUMNS + ["vector"], filter=pc.field("feature_set") == feature_set,
            batch_size=BATCH)
        n = 0
        with open(staging / "vectors.bin", "wb") as out, \
                pq.ParquetWriter(staging / "regions.parquet",
                                 pa.schema([(c, pa.string()) for c in ID_COLUMNS])) as ids:
            for batch in scanner.to_batches():
                if len(batch):
                    out.write(vectors.decode(batch.column("vector"), spec.dim,
                                             spec.dtype).tobytes())
                    ids.write_table(pa.Table.from_batches([batch]).select(ID_COLUMNS))
                    n += len(batch)
        VectorIndex.build(_vectors(staging, spec.dtype, spec.dim, n)).save(staging / "index.faiss")
        (staging / "meta.json").write_text(json.dumps({"dtype": spec.dtype, "dim": spec.dim,
                                                       "regions": n}))
        try:
            os.replace(staging, folder)
        except OSError:   # another process put the same index in place first
            if not (folder / "index.faiss").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _vectors(folder: Path, dtype: str, dim: int, n: int) -> np.ndarray:
    if n == 0:
        return np.zeros((0, dim), vectors.DTYPES[dtype])
    return np.memmap(folder / "vectors.bin", vectors.DTYPES[dtype], "r", shape=(n, dim))


@lru_cache(maxsize=8)
def _opened(folder: Path) -> tuple[pa.Table, np.ndarray, VectorIndex]:
    """A built index's ids, vectors and index, read once per process (a folder never changes:
    its name is the digest of what it was built from)."""
    meta = json.loads((folder / "meta.json").read_text())
    return (pq.read_table(folder / "regions.parquet"),
            _vectors(folder, meta["dtype"], meta["dim"], meta["regions"]),
            VectorIndex.open(folder / "index.faiss"))


def nearest_regions(warehouse, feature_set: str, region_id: str, k: int = 10,
                    root=None) -> list[tuple]:
    """What warehouse.feature_queries.nearest_regions gives, (region id, image id, label,
    cosine) of the k regions closest to `region_id`'s vector, most similar first, searched
    through the index (exact up to EXACT_UP_TO regions, an inverted file above); [] for a
    region the feature set does not have."""
    ids, vectors, index = _opened(build_region_index(warehouse, feature_set, root))
    row = pc.index(ids.column("region_id"), pa.scalar(region_id, pa.string())).as_py()
    if row < 0 or k <= 0:
        return []
    scores, rows = index.search(vectors[row:row + 1], k + 1)
    keep = (rows[0] >= 0) & (rows[0] != row)
    hits = ids.take(pa.array(rows[0][keep][:k]))
    return [(r["region_id"], r["image_id"], r["label"], float(cos))
            for r, cos in zip(hits.to_pylist(), scores[0][keep][:k])]
