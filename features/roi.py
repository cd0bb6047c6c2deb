"""Region features from one shared feature map: RoIAlign each box, then average its bins.

This is why extraction costs one backbone pass per image, not one per region crop."""
from __future__ import annotations

import torch
from torchvision.ops import roi_align

# One bin with adaptive sampling (torchvision's sampling_ratio <= 0): ceil(box size in cells)
# bilinear samples per side, evenly spaced. A box spanning many cells samples every one of them,
# and a box aligned to cells averages exactly those cells (more bins, or a fixed ratio, would
# sample between cell centres and blur in the neighbours; a fixed ratio of 2 also undersamples
# large boxes on fine maps). The vector is the mean over the samples.
OUTPUT_SIZE = 1
SAMPLING_RATIO = 0


def pool_regions(feature_map: torch.Tensor, boxes: list[torch.Tensor], input_size: int,
                 output_size: int = OUTPUT_SIZE, sampling_ratio: int = SAMPLING_RATIO
                 ) -> torch.Tensor:
    """feature_map [B, C, h, w] of square inputs of side `input_size` pixels; boxes: one
    [k_i, 4] tensor per image (x1, y1, x2, y2 in input pixels). Returns [sum k_i, C] float32,
    regions in the order given."""
    if len(boxes) != feature_map.shape[0]:
        raise ValueError(f"{len(boxes)} box lists for a batch of {feature_map.shape[0]} maps")
    h, w = feature_map.shape[-2:]
    if h != w:
        raise ValueError(f"expected a square feature map for square inputs, got {h}x{w}")
    fmap = feature_map.float()
    rois = [b.to(device=fmap.device, dtype=fmap.dtype).reshape(-1, 4) for b in boxes]
    # aligned=True: pixel i covers [i, i+1) and its value sits at i + 0.5, matching how boxes
    # are stored; spatial_scale maps input pixels to map cells.
    pooled = roi_align(fmap, rois, output_size=output_size, spatial_scale=w / input_size,
                       sampling_ratio=sampling_ratio, aligned=True)
    return pooled.mean(dim=(2, 3))
