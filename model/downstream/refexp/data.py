"""The referring-expression data path: warehouse expressions (the `referring` table, each naming
the annotated region it refers to) joined to their image's region features, which are the
candidates the model chooses among."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.batch import SentenceBatch, pad_rows
from model.config import ModelConfig
from model.downstream.sentences import SentenceImageData

HIT_IOU = 0.5   # a chosen region is right at IoU >= 0.5 with the gold box (RefCOCO's rule)


@dataclass
class ReferringBatch(SentenceBatch):
    image_index: torch.Tensor   # [B] long: row of the image in data.images
    targets: torch.Tensor       # [B, R] float: IoU of each candidate region with the gold box;
    #                             0 where visual.region_mask is False
    index: torch.Tensor         # [B] long: row of the expression in the dataset
    expression_ids: list[str]
    image_ids: list[str]


def box_iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of each [x1, y1, x2, y2] row of `boxes` [R, 4] with `box` [4]."""
    lo, hi = np.maximum(boxes[:, :2], box[:2]), np.minimum(boxes[:, 2:4], box[2:4])
    inter = np.clip(hi - lo, 0, None).prod(1)
    area = (boxes[:, 2:4] - boxes[:, :2]).prod(1)
    union = area + (box[2:4] - box[:2]).prod() - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0).astype(np.float32)


class ReferringData(SentenceImageData):
    """One item per expression of an image that has region features in `feature_set_id` (the
    others are counted in `n_without_features`). Its candidates are the image's feature regions
    as the model sees them (cut at max_regions); its target is each candidate's IoU with the gold
    box, as the authors' run_re.py. Expressions whose gold box no candidate covers at IoU >= 0.5
    stay (they can never be right) and are counted in `n_gold_unreachable`."""

    def __init__(self, warehouse, feature_set_id: str, cfg: ModelConfig,
                 split: str | None = "train", dataset: str | None = None):
        # the gold box scaled as region geometry is ([x1/W, y1/H, ...]): IoU does not change
        super().__init__(
            warehouse, feature_set_id, cfg,
            "SELECT r.id, r.image_id, r.expression, g.x1 / i.width, g.y1 / i.height, "
            "g.x2 / i.width, g.y2 / i.height FROM referring r "
            "JOIN regions g ON g.region_id = r.region_id JOIN images i ON i.id = r.image_id "
            "WHERE (? IS NULL OR r.split = ?) AND (? IS NULL OR r.dataset = ?) ORDER BY r.id",
            [split, split, dataset, dataset], sentence_column=2)
        self.expression_ids, self.expressions = self.ids, self.sentences
        self.gold = np.array([r[3:7] for r in self.rows], np.float32).reshape(-1, 4)
        self.targets = [box_iou(self.candidates(int(row)), gold)
                        for row, gold in zip(self.image_of, self.gold)]
        self.n_gold_unreachable = sum(1 for t in self.targets if not (t >= HIT_IOU).any())

    def candidates(self, row: int) -> np.ndarray:
        """[R, 6] geometry of image `row`'s candidate regions, in the order the model sees them."""
        r0, r1 = self.images.regions.offsets[row:row + 2]
        return np.asarray(self.images.geometry[r0:min(r1, r0 + self.cfg.max_regions)])

    def __getitem__(self, i: int) -> dict:
        return {**self.item(i), "targets": torch.from_numpy(self.targets[i])}

    def collate(self, items: list[dict]) -> ReferringBatch:
        targets, _ = pad_rows([x["targets"] for x in items], 0.0)
        return ReferringBatch(**self.collate_sentences(items), targets=targets,
                              expression_ids=[x["id"] for x in items])
