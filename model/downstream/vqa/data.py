"""The VQA data path: warehouse questions (every source format lands in the one `questions`
table) joined to their image's region features and tags."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from model.batch import TensorBatch, VisualInputs, pad_rows
from model.config import ModelConfig
from model.downstream.vqa.metrics import vqa_score
from model.text import question_tokens
from model.training.concepts import ConceptVocabulary
from model.training.data import VisualSource, require_model_feature_set
from warehouse.catalog import connect
from warehouse.store import Warehouse

MAX_ANSWERS = 3129   # the paper's answer vocabulary


@dataclass
class VQABatch(TensorBatch):
    token_ids: torch.Tensor     # [B, L] long: [CLS] question [SEP] tags [SEP], then pad_id
    token_mask: torch.Tensor    # [B, L] bool
    visual: VisualInputs
    image_index: torch.Tensor   # [B] long: row of the image in data.images
    targets: torch.Tensor       # [B, n_answers] float: soft score of each vocabulary answer
    index: torch.Tensor         # [B] long: row of the question in the dataset
    question_ids: list[str]
    image_ids: list[str]



def answer_vocabulary(answers: list[dict[str, int]], max_answers: int = MAX_ANSWERS) -> list[str]:
    """The `max_answers` answers listed by the most questions (ties: alphabetical); built from
    the training questions only."""
    counts = Counter(a for per_question in answers for a, n in per_question.items() if n > 0)
    return sorted(counts, key=lambda a: (-counts[a], a))[:max_answers]


class VQAData(Dataset):
    """One item per question of an image that has region features in `feature_set_id` (the
    others are counted in `n_without_features`). `answer_vocab` None builds it from these
    questions (pass None for the training split only). A question's target is the soft score of
    each vocabulary answer; one with none in the vocabulary stays, with an all-zero target (it
    scores 0), counted in `n_out_of_vocab`."""

    def __init__(self, warehouse, feature_set_id: str, cfg: ModelConfig,
                 answer_vocab: list[str] | None = None, split: str | None = "train",
                 dataset: str | None = None, max_answers: int = MAX_ANSWERS):
        wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
        require_model_feature_set(wh, feature_set_id, cfg)
        self.cfg = cfg
        with connect(wh) as con:
            rows = con.sql(
                "SELECT id, image_id, question, answers FROM questions "
                "WHERE (? IS NULL OR split = ?) AND (? IS NULL OR dataset = ?) ORDER BY id",
                params=[split, split, dataset, dataset]).fetchall()
        self.images = VisualSource(wh, feature_set_id, sorted({r[1] for r in rows}), cfg)
        kept = [r for r in rows if r[1] in self.images.row]
        self.n_without_features = len(rows) - len(kept)
        self.question_ids = [r[0] for r in kept]
        self.questions = [r[2] or "" for r in kept]
        self.answers = [{a["answer"]: a["count"] for a in (r[3] or [])} for r in kept]
        self.image_of = self.images.rows_of([r[1] for r in kept])
        self.answer_vocab = (answer_vocabulary(self.answers, max_answers)
                             if answer_vocab is None else list(answer_vocab))
        self._build_targets()
        self._build_text(wh)

    def _build_targets(self) -> None:
        index = {a: k for k, a in enumerate(self.answer_vocab)}
        self.targets = [[(index[a], vqa_score(a, per_q)) for a in per_q if a in index]
                        for per_q in self.answers]
        self.n_out_of_vocab = sum(1 for a, t in zip(self.answers, self.targets) if a and not t)

    def _build_text(self, wh: Warehouse) -> None:
        cfg = self.cfg
        vocabulary = (ConceptVocabulary.from_warehouse(wh, cfg.vocab_version)
                      if cfg.vocab_version else None)
        self.tokens = []
        # the question's concepts as the authors' VQA, the image's tags appended as the paper does
        for question, row in zip(self.questions, self.image_of):
            concepts = vocabulary.encode(question, cfg).concept_ids if vocabulary else []
            self.tokens.append(np.array(question_tokens(
                question, self.images.tag_words(int(row)).tolist(), cfg, concepts), np.int64))

    def __len__(self) -> int:
        return len(self.question_ids)

    def __getitem__(self, i: int) -> dict:
        return {"token_ids": torch.from_numpy(self.tokens[i]),
                **self.images.item(int(self.image_of[i])),
                "targets": self.targets[i], "index": i, "question_id": self.question_ids[i]}

    def collate(self, items: list[dict]) -> VQABatch:
        token_ids, token_mask = pad_rows([x["token_ids"] for x in items], self.cfg.pad_id)
        targets = torch.zeros(len(items), len(self.answer_vocab))
        for k, x in enumerate(items):
            for a, score in x["targets"]:
                targets[k, a] = score
        return VQABatch(token_ids=token_ids, token_mask=token_mask,
                        **self.images.collate(items), targets=targets,
                        index=torch.tensor([x["index"] for x in items], dtype=torch.long),
                        question_ids=[x["question_id"] for x in items])
