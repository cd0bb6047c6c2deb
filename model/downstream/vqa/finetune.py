"""VQA fine-tuning (METHOD.md §4): an answer classifier on the fused [CLS] hidden state,
initialised from the MLM head, trained with soft-score BCE; evaluation by answer and question type."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from model.batch import SentenceBatch
from model.config import ModelConfig
from model.downstream.head_finetune import HeadTask, fine_tuned, finetune_head, load_head
from model.downstream.vqa.data import VQABatch, VQAData
from model.downstream.vqa.metrics import majority_predictions, score_report
from model.mvp import MVP
from model.text import bpe

HEAD_DROPOUT = 0.3   # the authors' run_vqa.py setting


class VQAModel(nn.Module):
    """MVP + answer head, as the authors' `BiImageBertForVQA`: dropout on the fused [CLS] hidden
    state (not the tanh pooler, which only ITM trains), a copy of the MLM transform, a classifier.
    forward(batch, generator) -> {"loss", "train_score"}, so that Trainer trains it as it is. The
    answer vocabulary is the module's extra state: any load_state_dict checks it."""

    def __init__(self, mvp: MVP, answer_vocab: list[str]):
        super().__init__()
        if not answer_vocab:
            raise ValueError("empty answer vocabulary: no training question has an answer")
        self.mvp, self.answer_vocab = mvp, list(answer_vocab)
        self.dropout = nn.Dropout(HEAD_DROPOUT)
        self.transform = copy.deepcopy(mvp.mlm_transform)
        self.classifier = nn.Linear(mvp.cfg.hidden, len(self.answer_vocab))
        # with the copied transform and a linear decoder, logit a starts as the mean of the MLM
        # head's logits for a's BPE pieces (exactly the MLM score of a one-piece answer: "yes",
        # "2", "red"); the MVP's own MLM head stays unused
        with torch.no_grad():
            for k, a in enumerate(self.answer_vocab):
                pieces = torch.tensor(bpe(a), dtype=torch.long)
                self.classifier.weight[k] = mvp.word_embeddings[pieces].mean(0)
                self.classifier.bias[k] = mvp.mlm_bias[pieces].mean()

    @property
    def cfg(self) -> ModelConfig:   # Trainer.save records it as the checkpoint's model_config
        return self.mvp.cfg

    def logits(self, batch: SentenceBatch) -> torch.Tensor:
        """[B, n_answers]."""
        m = self.mvp
        text = m.encode_text(batch.token_ids, batch.token_mask)
        visual = m.encode_visual(batch.visual)
        cls = m.fuse(text, visual).hidden[:, 0]
        return self.classifier(self.transform(self.dropout(cls)))

    def forward(self, batch: VQABatch, generator: torch.Generator | None = None) -> dict:
        logits = self.logits(batch)
        targets = batch.targets.to(logits.dtype)
        # summed over answers, averaged over the batch (as the usual VQA code): its scale does
        # not shrink as the answer vocabulary grows
        loss = F.binary_cross_entropy_with_logits(logits, targets) * targets.shape[1]
        # the soft target at the argmax IS the VQA score of the predicted answer
        score = targets.gather(1, logits.argmax(1, keepdim=True)).mean()
        return {"loss": loss, "train_score": score.detach()}

    def get_extra_state(self) -> dict:
        return {"answer_vocab": self.answer_vocab}

    def set_extra_state(self, state: dict) -> None:
        if state["answer_vocab"] != self.answer_vocab:
            raise ValueError("checkpoint's answer vocabulary differs from this model's")


def load_vqa(checkpoint: str | Path | dict) -> VQAModel:
    """A fine-tuned VQAModel from a checkpoint written by `finetune_vqa` (on CPU)."""
    return load_head(checkpoint, lambda mvp, extra: VQAModel(mvp, extra["answer_vocab"]))


@torch.no_grad()
def answer(model: VQAModel, batch: SentenceBatch) -> list[str]:
    """The highest-scoring vocabulary answer of each question of the batch."""
    model.eval()
    device = next(model.parameters()).device
    best = model.logits(batch.to(device)).argmax(1).tolist()
    return [model.answer_vocab[k] for k in best]


def serve(model: VQAModel, inputs: SentenceBatch, boxes) -> list[dict]:
    """Serving's cells (model/serving/heads.py): the answer to each question."""
    return [{"answer": a} for a in answer(model, inputs)]


def predict(model: VQAModel, data: VQAData, batch_size: int = 64) -> list[str]:
    loader = DataLoader(data, batch_size=batch_size, collate_fn=data.collate)
    return [a for batch in loader for a in answer(model, batch)]


def _report(predictions: list[str], data: VQAData) -> dict:
    """score_report over the questions that have ground truth (test-dev style questions have
    none and cannot be scored), with the dataset's counts."""
    keep = [k for k, a in enumerate(data.answers) if a]
    report = score_report([predictions[k] for k in keep], [data.answers[k] for k in keep],
                          [data.questions[k] for k in keep])
    report.update(n_out_of_vocab=data.n_out_of_vocab, n_unanswered=len(data) - len(keep),
                  n_without_features=data.n_without_features)
    return report


def evaluate_vqa(checkpoint_or_model, warehouse, split: str | None, dataset: str | None = None,
                 feature_set: str | None = None, batch_size: int = 64,
                 device: str | None = None) -> dict:
    """Accuracy of a fine-tuned model on a split: {"vqa_acc", "by_answer_type",
    "by_question_type", "n_questions", "n_out_of_vocab", "n_unanswered", "n_without_features"}.
    The feature set defaults to the one the model was built for."""
    model = fine_tuned(checkpoint_or_model, load_vqa, VQAModel, device)
    feature_set = feature_set or model.cfg.feature_set
    if feature_set is None:
        raise ValueError("the model names no feature set: pass feature_set")
    data = VQAData(warehouse, feature_set, model.cfg, model.answer_vocab, split, dataset)
    return _report(predict(model, data, batch_size), data)


def baselines(train: VQAData, data: VQAData) -> dict:
    """Accuracy on `data` of answering every question with the training set's most common
    answer ("majority") and with the most common answer of its question type ("type_prior")."""
    majority, prior = majority_predictions(train.answers, train.questions, data.questions)
    return {"majority": _report(majority, data), "type_prior": _report(prior, data)}


def _flat_metrics(prefix: str, report: dict) -> dict:
    out = {f"{prefix}vqa_acc": report["vqa_acc"]}
    out.update({f"{prefix}acc_{t.replace('/', '_')}": v["vqa_acc"]
                for t, v in report["by_answer_type"].items()})
    return out


def _evaluate(model: VQAModel, train: VQAData, data: VQAData, batch_size: int):
    report, prior = _report(predict(model, data, batch_size), data), baselines(train, data)
    metrics = {**_flat_metrics("", report), **_flat_metrics("majority_", prior["majority"]),
               "n_out_of_vocab": data.n_out_of_vocab}
    return report, prior, metrics


TASK = HeadTask(
    name="vqa", score_key="train_score",
    data=lambda wh, fs, cfg, split, dataset, train: VQAData(
        wh, fs, cfg, None if train is None else train.answer_vocab, split, dataset),
    model=lambda mvp, train: VQAModel(mvp, train.answer_vocab),
    evaluate=_evaluate,
    params=lambda train: {"n_answers": len(train.answer_vocab),
                          "n_train_out_of_vocab": train.n_out_of_vocab},
    artifacts=lambda train: {"answer_vocab.json": train.answer_vocab})


def finetune_vqa(warehouse, init_from, **kw) -> dict:
    """finetune_head for VQA (VQA v2 names its splits train2014 / val2014): an answer
    classifier trained with soft-score BCE, evaluated by answer type against the majority and
    question-type priors. The result has "n_answers" too."""
    return finetune_head(TASK, warehouse, init_from, **kw)
