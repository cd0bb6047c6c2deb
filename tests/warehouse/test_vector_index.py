"""VectorIndex: exact search is numpy's cosine ranking, the inverted file scans the cells it is
told to (all of them: exact again; one: approximate), and a saved index searches the same."""
import numpy as np
import pytest

from warehouse.vector_index import VectorIndex


def _clustered(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim))
    return (centres[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, dim))
            ).astype(np.float16)


def _exact(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    v = vectors.astype(np.float64)
    q = queries.astype(np.float64)
    sim = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
        v / np.linalg.norm(v, axis=1, keepdims=True)).T
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def test_exact_search_is_the_cosine_ranking():
    vectors = _clustered(300)
    queries = _clustered(25, seed=1)
    index = VectorIndex.build(vectors)
    assert index.exact and len(index) == 300
    scores, rows = index.search(queries, 5)
    assert np.array_equal(rows, _exact(vectors, queries, 5))
    assert (np.diff(scores, axis=1) <= 0).all() and scores.max() <= 1 + 1e-5
    assert index.search(queries, 1000)[1].shape == (25, 300)   # k clipped to the rows


def test_the_inverted_file_scans_the_cells_it_is_told_to(tmp_path):
    vectors = _clustered(3000)
    queries = _clustered(200, seed=1)
    index = VectorIndex.build(vectors, exact_up_to=1000)
    cells = index.index.nlist
    assert not index.exact and cells == int(4 * np.sqrt(3000))
    truth = _exact(vectors, queries, 10)
    index.index.nprobe = cells                                    # every cell: exact
    assert np.array_equal(index.search(queries, 10)[1], truth)
    index.index.nprobe = 1                                        # one cell: approximate
    _, rows = index.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, truth)])
    assert 0.2 < recall < 1.0
    index.save(tmp_path / "i.faiss")
    assert [p.name for p in tmp_path.iterdir()] == ["i.faiss"]    # no temporary left
    opened = VectorIndex.open(tmp_path / "i.faiss", nprobe=1)
    assert np.array_equal(opened.search(queries, 10)[1], rows)


def test_an_empty_search_and_unfilled_rows():
    index = VectorIndex.build(_clustered(3))
    scores, rows = index.search(_clustered(2, seed=1), 0)
    assert rows.shape == (2, 0)
    ivf = VectorIndex.build(_clustered(2000), exact_up_to=100)
    ivf.index.nprobe = 1
    scores, rows = ivf.search(_clustered(50, seed=1), 1999)   # more than one cell holds
    assert (rows == -1).any() and np.isneginf(scores[rows == -1]).all()


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_any_float_dtype(dtype):
    vectors = _clustered(100).astype(dtype)
    assert np.array_equal(VectorIndex.build(vectors).search(vectors[:3], 1)[1].ravel(), [0, 1, 2])
