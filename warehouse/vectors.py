"""Vectors as stored: one raw little-endian float16/float32 byte string per row in a Parquet binary
column, so decoding a column is one np.frombuffer over Arrow's contiguous value buffer, with no
per-value list decoding (benchmarks/features.py)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

DTYPES = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}


def encode(vectors: np.ndarray, dtype: str = "float16") -> pa.BinaryArray:
    """[n, dim] floats -> n binary values of dim * itemsize bytes each."""
    arr = np.ascontiguousarray(np.asarray(vectors, dtype=DTYPES[dtype]))
    if arr.ndim != 2:
        raise ValueError(f"expected a [n, dim] array, got shape {arr.shape}")
    n, dim = arr.shape
    width = dim * arr.itemsize
    if n * width >= 2**31:  # Arrow binary offsets are int32: encode in smaller batches
        raise ValueError(f"{n} vectors of {width} bytes exceed 2 GiB in one column chunk")
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.BinaryArray.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets),
                                                        pa.py_buffer(arr.tobytes())])


def decode(column: pa.Array | pa.ChunkedArray, dim: int, dtype: str = "float16") -> np.ndarray:
    """n stored vectors -> [n, dim] array (float16 stays float16: cast where you compute)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    itemsize = DTYPES[dtype].itemsize
    parts = []
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        if chunk.null_count:
            raise ValueError("vector column has nulls")
        offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32)[chunk.offset:
                                                                   chunk.offset + len(chunk) + 1]
        start, stop = int(offsets[0]), int(offsets[-1])
        if stop - start != len(chunk) * dim * itemsize:
            raise ValueError(f"vectors are not all {dim}-d {dtype}")
        data = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)[start:stop]
        parts.append(data.view(DTYPES[dtype]).reshape(len(chunk), dim))
    if not parts:
        return np.zeros((0, dim), dtype=DTYPES[dtype])
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def cosine_arrow(a: pa.Array, b: pa.Array, dtype: pa.Array) -> pa.Array:
    """Row-wise cosine similarity of two stored-vector columns (DuckDB vectorised UDF
    `vector_cosine(a, b, dtype)`; dtype is the feature set's, constant within a query)."""
    if len(a) == 0:
        return pa.array([], type=pa.float32())
    kind = dtype[0].as_py()
    first = np.frombuffer(a[0].as_py(), dtype=DTYPES[kind])
    dim = len(first)
    x = decode(a, dim, kind).astype(np.float32)
    y = decode(b, dim, kind).astype(np.float32)
    num = (x * y).sum(1)
    den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    return pa.array(np.where(den > 0, num / np.maximum(den, 1e-12), 0.0), type=pa.float32())
