"""The data path every "one sentence about one image" task shares (VQA questions, entailment
hypotheses, referring expressions): warehouse rows joined to their image's region features and
tags, the sentence tokenised once as `[CLS] sentence concepts [SEP] tags [SEP]`."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from model.batch import pad_rows
from model.config import ModelConfig
from model.text import question_tokens
from model.training.concepts import ConceptVocabulary
from model.training.data import VisualSource, require_model_feature_set
from warehouse.catalog import connect
from warehouse.store import Warehouse


class SentenceImageData(Dataset):
    """One item per row of `sql` (its first two columns: row id, image id; the rest are the
    task's) whose image has region features in `feature_set_id`; the others are counted in
    `n_without_features`. `sentence` picks the text from a kept row; `extra` (rows) keeps
    the task's columns. Subclasses add their targets and batch."""

    def __init__(self, warehouse, feature_set_id: str, cfg: ModelConfig, sql: str,
                 params: list, sentence_column: int):
        wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
        require_model_feature_set(wh, feature_set_id, cfg)
        self.cfg = cfg
        with connect(wh) as con:
            rows = con.sql(sql, params=params).fetchall()
        self.images = VisualSource(wh, feature_set_id, sorted({r[1] for r in rows}), cfg)
        self.rows = [r for r in rows if r[1] in self.images.row]
        self.n_without_features = len(rows) - len(self.rows)
        self.ids = [r[0] for r in self.rows]
        self.sentences = [r[sentence_column] or "" for r in self.rows]
        self.image_of = self.images.rows_of([r[1] for r in self.rows])
        self.tokens = sentence_tokens(wh, cfg, self.images, self.sentences, self.image_of)

    def __len__(self) -> int:
        return len(self.ids)

    def item(self, i: int) -> dict:
        """The sentence and image of row i, as `collate_sentences` takes them."""
        return {"token_ids": torch.from_numpy(self.tokens[i]),
                **self.images.item(int(self.image_of[i])), "index": i, "id": self.ids[i]}

    def collate_sentences(self, items: list[dict]) -> dict:
        """The padded text and visual inputs of a batch of `item`s, named as in the batch
        dataclasses."""
        token_ids, token_mask = pad_rows([x["token_ids"] for x in items], self.cfg.pad_id)
        return {"token_ids": token_ids, "token_mask": token_mask, **self.images.collate(items),
                "index": torch.tensor([x["index"] for x in items], dtype=torch.long)}


def sentence_tokens(wh: Warehouse, cfg: ModelConfig, images: VisualSource,
                    sentences: list[str], image_rows) -> list[np.ndarray]:
    """Each sentence with its phrase concepts (as the authors' fine-tuning text) and its image's
    tags appended (as the paper does): `question_tokens`."""
    vocabulary = (ConceptVocabulary.from_warehouse(wh, cfg.vocab_version)
                  if cfg.vocab_version else None)
    out = []
    for sentence, row in zip(sentences, image_rows):
        concepts = vocabulary.encode(sentence, cfg).concept_ids if vocabulary else []
        out.append(np.array(question_tokens(sentence, images.tag_words(int(row)).tolist(), cfg,
                                            concepts), np.int64))
    return out
