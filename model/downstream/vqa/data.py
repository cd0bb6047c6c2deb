"""The VQA data path: warehouse questions (every source format lands in the one `questions`
table) joined to their image's region features and tags."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from model.batch import SentenceBatch
from model.config import ModelConfig
from model.downstream.sentences import SentenceImageData
from model.downstream.vqa.metrics import vqa_score

MAX_ANSWERS = 3129   # the paper's answer vocabulary


@dataclass
class VQABatch(SentenceBatch):
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


class VQAData(SentenceImageData):
    """One item per question of an image that has region features in `feature_set_id` (the
    others are counted in `n_without_features`). `answer_vocab` None builds it from these
    questions (pass None for the training split only). A question's target is the soft score of
    each vocabulary answer; one with none in the vocabulary stays, with an all-zero target (it
    scores 0), counted in `n_out_of_vocab`."""

    def __init__(self, warehouse, feature_set_id: str, cfg: ModelConfig,
                 answer_vocab: list[str] | None = None, split: str | None = "train",
                 dataset: str | None = None, max_answers: int = MAX_ANSWERS):
        super().__init__(
            warehouse, feature_set_id, cfg,
            "SELECT id, image_id, question, answers FROM questions "
            "WHERE (? IS NULL OR split = ?) AND (? IS NULL OR dataset = ?) ORDER BY id",
            [split, split, dataset, dataset], sentence_column=2)
        self.question_ids, self.questions = self.ids, self.sentences
        self.answers = [{a["answer"]: a["count"] for a in (r[3] or [])} for r in self.rows]
        self.answer_vocab = (answer_vocabulary(self.answers, max_answers)
                             if answer_vocab is None else list(answer_vocab))
        self._build_targets()

    def _build_targets(self) -> None:
        index = {a: k for k, a in enumerate(self.answer_vocab)}
        self.targets = [[(index[a], vqa_score(a, per_q)) for a in per_q if a in index]
                        for per_q in self.answers]
        self.n_out_of_vocab = sum(1 for a, t in zip(self.answers, self.targets) if a and not t)

    def __getitem__(self, i: int) -> dict:
        return {**self.item(i), "targets": self.targets[i]}

    def collate(self, items: list[dict]) -> VQABatch:
        targets = torch.zeros(len(items), len(self.answer_vocab))
        for k, x in enumerate(items):
            for a, score in x["targets"]:
                targets[k, a] = score
        return VQABatch(**self.collate_sentences(items), targets=targets,
                        question_ids=[x["id"] for x in items])
