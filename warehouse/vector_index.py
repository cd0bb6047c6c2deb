"""Nearest neighbours by cosine over a fixed set of vectors, behind one search call: exact (faiss
IndexFlatIP, every row scored) up to `exact_up_to` rows, an inverted-file index above (faiss
IndexIVFFlat: k-means cells, a query scans the `nprobe` nearest cells), which is what makes a
gallery of millions searchable. Saved to one file, written atomically."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

EXACT_UP_TO = 200_000    # below this a full scan is cheap enough (and exact)
NPROBE = 64              # cells a query scans; recall rises and speed falls with it
TRAIN_PER_CELL = 64      # k-means sample: rows per cell (faiss warns below 39)
CHUNK = 65_536           # rows normalised and added at a time: memory of one chunk


def _faiss():
    import faiss  # imported where used: a few hundred ms, and only searches need it
    return faiss


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


class VectorIndex:
    """Row numbers of the vectors nearest a query by cosine (vectors need not be unit)."""

    def __init__(self, index):
        self.index = index

    @classmethod
    def build(cls, vectors: np.ndarray, exact_up_to: int = EXACT_UP_TO, nprobe: int = NPROBE,
              seed: int = 0) -> "VectorIndex":
        """An index of `vectors` [n, dim] (any float dtype; a memory map is read a chunk at a
        time). Above `exact_up_to` rows: sqrt(n) * 4 cells trained on a sample of the rows."""
        faiss = _faiss()
        n, dim = vectors.shape
        if n <= exact_up_to:
            index = faiss.IndexFlatIP(dim)
        else:
            cells = int(4 * np.sqrt(n))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells,
                                       faiss.METRIC_INNER_PRODUCT)
            sample = np.sort(np.random.default_rng(seed).choice(
                n, min(n, TRAIN_PER_CELL * cells), replace=False))
            index.train(_unit(vectors[sample]))
            index.nprobe = nprobe
        for start in range(0, n, CHUNK):
            index.add(_unit(vectors[start:start + CHUNK]))
        return cls(index)

    @property
    def exact(self) -> bool:
        return not hasattr(self.index, "nprobe")

    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(cosine [q, k] float32, rows [q, k] int64), best first; a row of -1 (cosine -inf)
        where fewer than k vectors were found."""
        k = min(k, len(self))
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        scores, rows = self.index.search(_unit(queries), k)
        return np.where(rows >= 0, scores, -np.inf).astype(np.float32), rows.astype(np.int64)

    def save(self, path) -> None:
        """Write the index to `path` whole or not at all (a temporary file renamed into place)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            _faiss().write_index(self.index, str(tmp))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def open(cls, path, nprobe: int = NPROBE) -> "VectorIndex":
        """An index saved by `save`; an inverted-file index's lists stay memory-mapped."""
        faiss = _faiss()
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        if hasattr(index, "nprobe"):
            index.nprobe = nprobe
        return cls(index)
