"""Visual entailment (SNLI-VE): a 3-way classifier on the fused pooled output, as the authors'
`BiImageBertForSequenceClassification` in run_ve.py (dropout, one linear layer, cross-entropy),
evaluated as accuracy overall and per class against chance and the best constant answer."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from model.batch import SentenceBatch
from model.config import ModelConfig
from model.downstream.entailment.data import EntailmentBatch, EntailmentData
from model.downstream.head_finetune import HeadTask, fine_tuned, finetune_head, load_head
from model.mvp import MVP
from warehouse.schemas import ENTAILMENT_LABELS


class EntailmentModel(nn.Module):
    """MVP + classifier over ENTAILMENT_LABELS. It reads the pooler, as the authors do: the
    pooler is what pre-training's ITM taught to judge whether a text fits an image, the
    closest pre-trained skill to entailment. forward(batch, generator) -> {"loss", "train_acc"}."""

    def __init__(self, mvp: MVP):
        super().__init__()
        self.mvp = mvp
        self.dropout = nn.Dropout(mvp.cfg.dropout)   # the authors' hidden dropout
        self.classifier = nn.Linear(mvp.cfg.hidden, len(ENTAILMENT_LABELS))
        MVP._init_weights(self.classifier)

    @property
    def cfg(self) -> ModelConfig:   # Trainer.save records it as the checkpoint's model_config
        return self.mvp.cfg

    def logits(self, batch: SentenceBatch) -> torch.Tensor:
        """[B, 3] in ENTAILMENT_LABELS order."""
        m = self.mvp
        fused = m.fuse(m.encode_text(batch.token_ids, batch.token_mask),
                       m.encode_visual(batch.visual))
        return self.classifier(self.dropout(fused.pooled))

    def forward(self, batch: EntailmentBatch, generator: torch.Generator | None = None) -> dict:
        logits = self.logits(batch)
        accuracy = (logits.argmax(1) == batch.labels).float().mean()
        return {"loss": F.cross_entropy(logits, batch.labels), "train_acc": accuracy.detach()}


def load_ve(checkpoint: str | Path | dict) -> EntailmentModel:
    """A fine-tuned EntailmentModel from a checkpoint written by `finetune_ve` (on CPU)."""
    return load_head(checkpoint, lambda mvp, extra: EntailmentModel(mvp))


@torch.no_grad()
def classify(model: EntailmentModel, batch: SentenceBatch) -> torch.Tensor:
    """[B, 3] class probabilities (ENTAILMENT_LABELS order), on CPU."""
    model.eval()
    device = next(model.parameters()).device
    return model.logits(batch.to(device)).softmax(1).cpu()


def serve(model: EntailmentModel, inputs: SentenceBatch, boxes) -> list[dict]:
    """Serving's cells (model/serving/heads.py): the label and the three probabilities."""
    return [{"entailment": ENTAILMENT_LABELS[int(p.argmax())], "entailment_probs": p.tolist()}
            for p in classify(model, inputs).double()]


def predict(model: EntailmentModel, data: EntailmentData, batch_size: int = 64) -> torch.Tensor:
    loader = DataLoader(data, batch_size=batch_size, collate_fn=data.collate)
    probs = [classify(model, batch) for batch in loader]
    return torch.cat(probs) if probs else torch.zeros(0, len(ENTAILMENT_LABELS))


def label_share(labels: list[int]) -> dict[str, float]:
    """The share of each of ENTAILMENT_LABELS among `labels` (class indices)."""
    n = len(labels)
    return {name: (sum(y == k for y in labels) / n if n else 0.0)
            for k, name in enumerate(ENTAILMENT_LABELS)}


def accuracy_report(predicted: list[int], labels: list[int]) -> dict:
    """{"ve_acc", "by_label": {label: accuracy or None}, "label_share": {label: share},
    "chance", "best_constant", "n_hypotheses"}; best_constant is the largest label share: what
    answering one label for every hypothesis would score on these very labels."""
    n = len(labels)
    by_label = {}
    for k, name in enumerate(ENTAILMENT_LABELS):
        rows = [p == y for p, y in zip(predicted, labels) if y == k]
        by_label[name] = sum(rows) / len(rows) if rows else None
    share = label_share(labels)
    return {"ve_acc": sum(p == y for p, y in zip(predicted, labels)) / n if n else 0.0,
            "by_label": by_label, "label_share": share, "chance": 1 / len(ENTAILMENT_LABELS),
            "best_constant": max(share.values()), "n_hypotheses": n}


def _report(model: EntailmentModel, data: EntailmentData, batch_size: int) -> dict:
    report = accuracy_report(predict(model, data, batch_size).argmax(1).tolist(), data.labels)
    report["n_without_features"] = data.n_without_features
    return report


def evaluate_ve(checkpoint_or_model, warehouse, split: str | None, dataset: str | None = None,
                feature_set: str | None = None, batch_size: int = 64,
                device: str | None = None) -> dict:
    """accuracy_report of a fine-tuned model on a split, plus "n_without_features". The feature
    set defaults to the one the model was built for."""
    model = fine_tuned(checkpoint_or_model, load_ve, EntailmentModel, device)
    data = EntailmentData(warehouse, feature_set or model.cfg.feature_set, model.cfg, split,
                          dataset)
    return _report(model, data, batch_size)


def _evaluate(model: EntailmentModel, train: EntailmentData, data: EntailmentData,
              batch_size: int):
    report = _report(model, data, batch_size)
    metrics = {"ve_acc": report["ve_acc"], "chance": report["chance"],
               "best_constant": report["best_constant"],
               **{f"acc_{k}": v for k, v in report["by_label"].items() if v is not None}}
    return report, None, metrics


TASK = HeadTask(
    name="ve", score_key="train_acc",
    data=lambda wh, fs, cfg, split, dataset, train: EntailmentData(wh, fs, cfg, split, dataset),
    model=lambda mvp, train: EntailmentModel(mvp),
    evaluate=_evaluate,
    params=lambda train: {"label_share": {k: round(v, 4)
                                          for k, v in label_share(train.labels).items()}})


def finetune_ve(warehouse, init_from, **kw) -> dict:
    """finetune_head for visual entailment (SNLI-VE names its splits train / dev / test)."""
    return finetune_head(TASK, warehouse, init_from, **kw)
