"""Box arithmetic between an image's pixels, the backbone's input and the paper's 6-d geometry.
Boxes are [n, 4] float arrays of x1, y1, x2, y2 in continuous pixel coordinates of the original
image (top-left origin; pixel i spans [i, i+1)), as the `regions` table stores them."""
from __future__ import annotations

import numpy as np


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes to the image: (clipped [n, 4] float32, usable [n] bool). Ingest tolerates boxes
    a pixel or two past the border (detector output); a box with no area left inside the image
    (or non-finite coordinates) is not usable."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    clipped = np.empty_like(b)
    clipped[:, 0::2] = np.clip(b[:, 0::2], 0, width)
    clipped[:, 1::2] = np.clip(b[:, 1::2], 0, height)
    with np.errstate(invalid="ignore"):
        usable = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return clipped, usable


def normalized_geometry(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """METHOD.md's region geometry [x1/W, y1/H, x2/W, y2/H, w/W, h/H], [n, 6] float32."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scale = np.array([width, height, width, height], dtype=np.float64)
    norm = b / scale
    return np.concatenate([norm, norm[:, 2:4] - norm[:, 0:2]], axis=1).astype(np.float32)


def to_input_pixels(boxes: np.ndarray, width: int, height: int, input_size: int) -> np.ndarray:
    """Image-pixel boxes -> pixels of the backbone input. The preprocess squashes the image to
    input_size x input_size (no crop), so x scales by S/W and y by S/H, exactly."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scale = np.array([input_size / width, input_size / height] * 2, dtype=np.float32)
    return b * scale


def grid_boxes(width: int, height: int, grid: int) -> np.ndarray:
    """grid x grid equal cells covering the image, row-major (cell k = row * grid + col)."""
    if grid < 1:
        raise ValueError(f"grid must be at least 1, got {grid}")
    xs = np.linspace(0, width, grid + 1, dtype=np.float64)
    ys = np.linspace(0, height, grid + 1, dtype=np.float64)
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    return np.stack([xs[cols], ys[rows], xs[cols + 1], ys[rows + 1]], axis=1).astype(np.float32)
