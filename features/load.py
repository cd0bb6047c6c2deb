"""Reading a feature set back for training: whole columns at a time, no per-row Python (pyarrow scans
with filters pushed down to row groups; vectors via warehouse.vectors.decode). Regions come
grouped by image with CSR offsets: image k's regions are rows offsets[k]:offsets[k+1]."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from features.feature_sets import FeatureSetSpec, require_feature_set
from warehouse import vectors
from warehouse.schemas import TABLES
from warehouse.store import Warehouse


@dataclass
class RegionFeatures:
    feature_set: FeatureSetSpec
    image_ids: np.ndarray     # [m] str: the images, in stored order
    offsets: np.ndarray       # [m + 1] int64: image k's regions are rows offsets[k]:offsets[k+1]
    image_id: np.ndarray      # [n] str, per region
    region_id: np.ndarray     # [n] str
    box_source: np.ndarray    # [n] str: annotation | detector | grid | imported
    label: np.ndarray         # [n] str or None
    score: np.ndarray         # [n] float32, nan where null (annotations, grid cells)
    geometry: np.ndarray      # [n, 6] float32: [x1/W, y1/H, x2/W, y2/H, w/W, h/H]
    vectors: torch.Tensor     # [n, dim] in the feature set's dtype

    def __len__(self) -> int:
        return len(self.region_id)


@dataclass
class ImageFeatures:
    feature_set: FeatureSetSpec
    image_ids: np.ndarray     # [m] str
    vectors: torch.Tensor     # [m, dim] global image vectors


def _scan(wh: Warehouse, table: str, feature_set_id: str, columns: list[str],
          image_ids: Iterable[str] | None) -> pa.Table:
    condition = pc.field("feature_set") == feature_set_id
    if image_ids is not None:
        condition &= pc.field("image_id").isin(pa.array(list(image_ids), pa.string()))
    return wh.dataset(table, TABLES[table]).to_table(columns=columns, filter=condition)


def _image_starts(t: pa.Table) -> np.ndarray:
    """Row indices where a new image's rows begin (rows of one image are adjacent)."""
    if len(t) == 0:
        return np.zeros(0, np.int64)
    ids = t.column("image_id")
    changed = pc.not_equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False)
    return np.flatnonzero(np.r_[True, changed])


def _grouped_by_image(t: pa.Table) -> pa.Table:
    """Rows of one image together. Parts are written image by image, so this is already true
    unless scans interleave; then a stable sort by image id restores it."""
    if len(_image_starts(t)) == pc.count_distinct(t.column("image_id")).as_py():
        return t
    return t.take(pc.sort_indices(t, [("image_id", "ascending")]))


def _tensor(column, spec: FeatureSetSpec) -> torch.Tensor:
    arr = vectors.decode(column, spec.dim, spec.dtype)
    # decode may return a read-only view of Arrow's buffer; torch needs memory it may write
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def load_region_features(warehouse: str | Warehouse, feature_set_id: str,
                         image_ids: Iterable[str] | None = None) -> RegionFeatures:
    """The regions of a feature set (all, or of the given images), grouped by image."""
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    spec = require_feature_set(wh, feature_set_id)
    t = _grouped_by_image(_scan(wh, "region_features", feature_set_id,
                                ["image_id", "region_id", "box_source", "label", "score",
                                 "geometry", "vector"], image_ids))
    image_id = t.column("image_id").to_numpy(zero_copy_only=False)
    starts = _image_starts(t)
    geometry = t.column("geometry").combine_chunks()
    return RegionFeatures(
        feature_set=spec, image_ids=image_id[starts],
        offsets=np.r_[starts, len(t)].astype(np.int64),
        image_id=image_id, region_id=t.column("region_id").to_numpy(zero_copy_only=False),
        box_source=t.column("box_source").to_numpy(zero_copy_only=False),
        label=t.column("label").to_numpy(zero_copy_only=False),
        score=t.column("score").to_numpy(zero_copy_only=False).astype(np.float32),
        geometry=geometry.flatten().to_numpy(zero_copy_only=False).reshape(-1, 6)
        if len(t) else np.zeros((0, 6), np.float32),
        vectors=_tensor(t.column("vector"), spec))


def load_image_features(warehouse: str | Warehouse, feature_set_id: str,
                        image_ids: Iterable[str] | None = None) -> ImageFeatures:
    """The global image vectors of a feature set (all, or of the given images)."""
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    spec = require_feature_set(wh, feature_set_id)
    t = _scan(wh, "image_features", feature_set_id, ["image_id", "vector"], image_ids)
    return ImageFeatures(spec, t.column("image_id").to_numpy(zero_copy_only=False),
                         _tensor(t.column("vector"), spec))
