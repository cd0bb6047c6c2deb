"""A served package's image gallery: the g_v of every image of a split, in a vector index
(warehouse/vector_index.py, the one evaluation and nearest_regions use), so a request's caption
finds its nearest images by the dual encoder without any image in the request."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from model.downstream.evaluate import gallery_vectors
from model.mvp import MVP
from model.training.data import PretrainData
from warehouse.store import Warehouse
from warehouse.vector_index import VectorIndex

TOP_K = 10   # images a caption gets back


def build_gallery(model: MVP, wh: Warehouse, split: str, folder: Path) -> dict[str, str]:
    """Index the images of `split` that have captions, in the model's feature set and
    vocabulary; returns the package artifacts {"gallery_index", "gallery_ids"}."""
    cfg = model.cfg
    data = PretrainData(wh, cfg.feature_set, cfg.vocab_version, cfg, split=split)
    if len(data) == 0:
        raise LookupError(f"no {split!r} images with captions in feature set {cfg.feature_set}")
    index, ids = folder / "gallery.faiss", folder / "gallery_ids.json"
    VectorIndex.build(gallery_vectors(model, data).numpy()).save(index)
    ids.write_text(json.dumps([str(i) for i in data.regions.image_ids]))
    return {"gallery_index": str(index), "gallery_ids": str(ids)}


class Gallery:
    def __init__(self, index: VectorIndex, image_ids: list[str]):
        if len(index) != len(image_ids):
            raise ValueError(f"gallery index of {len(index)} images, {len(image_ids)} ids")
        self.index, self.image_ids = index, image_ids

    @classmethod
    def open(cls, artifacts: dict) -> "Gallery | None":
        """The package's gallery, None when it was packaged without one."""
        if "gallery_index" not in artifacts:
            return None
        ids = json.loads(Path(artifacts["gallery_ids"]).read_text())
        return cls(VectorIndex.open(artifacts["gallery_index"]), ids)

    def nearest(self, text_g: np.ndarray, k: int = TOP_K) -> list[tuple[list[str], list[float]]]:
        """For each caption vector, its k nearest images (ids) and their cosines, best first."""
        scores, rows = self.index.search(text_g, k)
        return [([self.image_ids[r] for r in row[row >= 0]], [float(s) for s in score[row >= 0]])
                for score, row in zip(scores, rows)]
