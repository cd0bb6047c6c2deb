"""The visual-entailment data path: warehouse `entailment` rows (SNLI-VE, shapes) joined to their
image's region features and tags; the label is the class index of `ENTAILMENT_LABELS`."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from model.batch import SentenceBatch
from model.config import ModelConfig
from model.downstream.sentences import SentenceImageData
from warehouse.schemas import ENTAILMENT_LABELS


@dataclass
class EntailmentBatch(SentenceBatch):
    image_index: torch.Tensor   # [B] long: row of the image in data.images
    labels: torch.Tensor        # [B] long: index in ENTAILMENT_LABELS
    index: torch.Tensor         # [B] long: row of the hypothesis in the dataset
    pair_ids: list[str]
    image_ids: list[str]


class EntailmentData(SentenceImageData):
    """One item per hypothesis of `split` (and `dataset`) whose image has region features."""

    def __init__(self, warehouse, feature_set_id: str, cfg: ModelConfig,
                 split: str | None = "train", dataset: str | None = None):
        super().__init__(
            warehouse, feature_set_id, cfg,
            "SELECT id, image_id, hypothesis, label FROM entailment "
            "WHERE (? IS NULL OR split = ?) AND (? IS NULL OR dataset = ?) ORDER BY id",
            [split, split, dataset, dataset], sentence_column=2)
        self.labels = [ENTAILMENT_LABELS.index(r[3]) for r in self.rows]

    def __getitem__(self, i: int) -> dict:
        return {**self.item(i), "label": self.labels[i]}

    def collate(self, items: list[dict]) -> EntailmentBatch:
        return EntailmentBatch(**self.collate_sentences(items),
                               labels=torch.tensor([x["label"] for x in items], dtype=torch.long),
                               pair_ids=[x["id"] for x in items])
