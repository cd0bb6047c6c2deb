"""A served package's image gallery: the g_v of every image of a split, searched through a
vector index (warehouse/vector_index.py, the one evaluation and nearest_regions use), so a
request's caption finds its nearest images by the dual encoder without any image in the request.
The package holds the vectors as a plain .npy (read without pickle) and the ids as JSON; the
index is built when the package loads, so nothing in a package is parsed by native code."""
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
    vectors, ids = folder / "gallery_vectors.npy", folder / "gallery_ids.json"
    np.save(vectors, gallery_vectors(model, data).numpy())
    ids.write_text(json.dumps([str(i) for i in data.regions.image_ids]))
    return {"gallery_vectors": str(vectors), "gallery_ids": str(ids)}


class Gallery:
    def __init__(self, vectors: np.ndarray, image_ids: list[str]):
        if vectors.ndim != 2 or len(vectors) != len(image_ids) \
                or not all(isinstance(i, str) for i in image_ids):
            raise ValueError(f"a gallery needs one id (a string) per vector: {len(image_ids)} "
                             f"ids, vectors of shape {vectors.shape}")
        self.index, self.image_ids = VectorIndex.build(vectors), image_ids

    @classmethod
    def open(cls, artifacts: dict) -> "Gallery | None":
        """The package's gallery, None when it was packaged without one."""
        if "gallery_vectors" not in artifacts:
            return None
        return cls(np.load(artifacts["gallery_vectors"], allow_pickle=False),
                   json.loads(Path(artifacts["gallery_ids"]).read_text()))

    def nearest(self, text_g: np.ndarray, k: int = TOP_K) -> list[tuple[list[str], list[float]]]:
        """For each caption vector, its k nearest images (ids) and their cosines, best first."""
        scores, rows = self.index.search(text_g, k)
        return [([self.image_ids[r] for r in row[row >= 0]], [float(s) for s in score[row >= 0]])
                for score, row in zip(scores, rows)]
