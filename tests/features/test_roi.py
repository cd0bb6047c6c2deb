"""RoIAlign pooling and box geometry, checked against hand computations."""
import numpy as np
import pytest
import torch

from features.geometry import clip_boxes, grid_boxes, normalized_geometry, to_input_pixels
from features.roi import pool_regions

# A 4x4 map with values that are not linear in the position, so every interpolation weight
# matters (bilinear sampling of a linear map is right for any symmetric wrong weights).
CELLS = [[1, 4, 2, 8],
         [0, 6, 10, 3],
         [2, 0, 8, 1],
         [3, 3, 3, 10]]
INPUT = 8  # the map covers an 8x8 input: one cell = 2x2 input pixels


def _pool(*boxes, channels=1):
    fmap = torch.tensor(CELLS, dtype=torch.float32).expand(1, channels, 4, 4)
    return pool_regions(fmap, [torch.tensor(boxes, dtype=torch.float32)], INPUT)


def test_cell_aligned_boxes_average_exactly_their_cells():
    out = _pool([0, 0, 4, 4], [4, 4, 8, 8], [0, 0, 8, 8], [2, 6, 4, 8])
    assert out.shape == (4, 1)
    assert out[:, 0].tolist() == pytest.approx([
        (1 + 4 + 0 + 6) / 4,          # top-left 2x2 cells
        (8 + 1 + 3 + 10) / 4,         # bottom-right 2x2 cells
        float(np.mean(CELLS)),        # the whole map
        3.0])                         # one cell: row 3, col 1


def _bilinear(y, x):
    """CELLS sampled at (y, x) in cell-centre coordinates (cell (r, c) has its value at (r, c))."""
    y0, x0 = int(y), int(x)
    fy, fx = y - y0, x - x0
    return ((1 - fy) * ((1 - fx) * CELLS[y0][x0] + fx * CELLS[y0][x0 + 1])
            + fy * ((1 - fx) * CELLS[y0 + 1][x0] + fx * CELLS[y0 + 1][x0 + 1]))


def test_box_off_the_cell_grid_is_bilinear():
    # input box x in [1, 4], y in [0, 4] -> map x in [0.5, 2.0] (1.5 cells: 2 samples, at 0.875
    # and 1.625, i.e. 0.375 and 1.125 in cell-centre coordinates), y in [0, 2] (rows 0 and 1)
    def row(r):
        c = CELLS[r]
        return ((0.625 * c[0] + 0.375 * c[1]) + (0.875 * c[1] + 0.125 * c[2])) / 2
    expected = (row(0) + row(1)) / 2
    assert expected == pytest.approx(3.65625)
    assert expected == pytest.approx(np.mean([_bilinear(y, x) for y in (0, 1)
                                              for x in (0.375, 1.125)]))
    assert _pool([1, 0, 4, 4])[0, 0].item() == pytest.approx(expected)


def test_half_cell_box_interpolates_between_cell_centres():
    # map box [1.0, 1.5] x [1.0, 1.5]: one sample at 1.25, i.e. 0.75 in cell-centre coordinates
    expected = _bilinear(0.75, 0.75)
    assert expected == pytest.approx(0.0625 * 1 + 0.1875 * 4 + 0.1875 * 0 + 0.5625 * 6)
    assert _pool([2, 2, 3, 3])[0, 0].item() == pytest.approx(expected)


def test_channels_and_batch_images_stay_apart():
    fmap = torch.stack([torch.tensor(CELLS, dtype=torch.float32),
                        -torch.tensor(CELLS, dtype=torch.float32)]).unsqueeze(0)  # [1, 2, 4, 4]
    fmap = torch.cat([fmap, fmap * 10])                                        # [2, 2, 4, 4]
    boxes = [torch.tensor([[0., 0., 4., 4.]]), torch.tensor([[4., 4., 8., 8.], [0, 0, 8, 8]])]
    out = pool_regions(fmap, boxes, INPUT)
    assert out.flatten().tolist() == pytest.approx([2.75, -2.75, 55.0, -55.0,
                                                    10 * np.mean(CELLS), -10 * np.mean(CELLS)])


def test_pool_regions_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="box lists"):
        pool_regions(torch.zeros(2, 1, 4, 4), [torch.zeros(0, 4)], INPUT)


def test_geometry_is_normalised_corners_and_size():
    g = normalized_geometry(np.array([[10, 20, 50, 60], [0, 0, 200, 100]]), 200, 100)
    assert g.dtype == np.float32 and g.shape == (2, 6)
    assert g[0].tolist() == pytest.approx([0.05, 0.2, 0.25, 0.6, 0.2, 0.4])
    assert g[1].tolist() == pytest.approx([0, 0, 1, 1, 1, 1])


def test_boxes_map_to_squashed_input_pixels():
    # a 200x100 image squashed to 64x64: x scales by 0.32, y by 0.64
    b = to_input_pixels(np.array([[10, 20, 50, 60]]), 200, 100, 64)
    assert b[0].tolist() == pytest.approx([3.2, 12.8, 16.0, 38.4])


def test_clip_keeps_area_inside_and_flags_unusable_boxes():
    boxes = np.array([[-2, 5, 10, 30],       # past the left and bottom edges: clipped
                      [40, 10, 60, 20],      # entirely right of the image
                      [5, 5, 5, 10],         # zero width
                      [np.nan, 0, 4, 4],     # not a box
                      [1, 1, 31, 23]])       # inside
    clipped, usable = clip_boxes(boxes, 32, 24)
    assert usable.tolist() == [True, False, False, False, True]
    assert clipped[0].tolist() == [0, 5, 10, 24]
    assert clipped[4].tolist() == [1, 1, 31, 23]


def test_grid_cells_are_row_major_and_tile_the_image():
    cells = grid_boxes(48, 32, 4)
    assert cells.shape == (16, 4)
    assert cells[0].tolist() == [0, 0, 12, 8]
    assert cells[1].tolist() == [12, 0, 24, 8]    # next column
    assert cells[4].tolist() == [0, 8, 12, 16]    # next row
    assert cells[15].tolist() == [36, 24, 48, 32]
    area = np.prod(cells[:, 2:] - cells[:, :2], axis=1).sum()
    assert area == 48 * 32
    with pytest.raises(ValueError):
        grid_boxes(48, 32, 0)
