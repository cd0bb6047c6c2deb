"""Referring-expression comprehension (RefCOCO+), as the authors' `BiImageBertForRE` and
run_re.py: each candidate region is scored by the cosine of its fused state with the fused [CLS]
at an intermediate cross layer, trained with MSE toward its IoU with the gold box, evaluated as
the share of expressions whose best-scored region has IoU >= 0.5."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from model.batch import SentenceBatch
from model.config import ModelConfig
from model.downstream.head_finetune import HeadTask, fine_tuned, finetune_head, load_head
from model.downstream.refexp.data import HIT_IOU, ReferringBatch, ReferringData
from model.mvp import MVP

# The authors read the fused states at `--phrase_layer 2` (0-based, README's RefCOCO+ command) of
# their 6-layer cross encoder: after 3 of its 6 layers. A preset with another depth reads after the
# same fraction of its cross layers, at least one: base 3 of 6, small 1 of 2, tiny its only one.
AUTHORS_LAYER, AUTHORS_CROSS_LAYERS = 3, 6


def fusion_layer(cfg: ModelConfig) -> int:
    return max(1, math.ceil(cfg.cross_layers * AUTHORS_LAYER / AUTHORS_CROSS_LAYERS))


class ReferringModel(nn.Module):
    """MVP + the authors' referring head: dropout (the model's own rate, as their
    hidden_dropout_prob) on the fused states after `layer` cross layers, then the cosine of each
    region's state with the [CLS] state; no parameters of its own. forward(batch, generator) ->
    {"loss", "train_acc"}, so that Trainer trains it as it is. The layer is the module's extra
    state: a checkpoint keeps the layer it was trained at."""

    def __init__(self, mvp: MVP, layer: int | None = None):
        super().__init__()
        self.mvp = mvp
        self.layer = fusion_layer(mvp.cfg) if layer is None else int(layer)
        if not 1 <= self.layer <= mvp.cfg.cross_layers:
            raise ValueError(f"layer {self.layer} not in 1..{mvp.cfg.cross_layers}")
        self.dropout = nn.Dropout(mvp.cfg.dropout)

    @property
    def cfg(self) -> ModelConfig:   # Trainer.save records it as the checkpoint's model_config
        return self.mvp.cfg

    def scores(self, batch: SentenceBatch) -> torch.Tensor:
        """[B, R] cosines in [-1, 1]; padded regions' entries are meaningless (mask them)."""
        m = self.mvp
        text = m.encode_text(batch.token_ids, batch.token_mask)
        fused = m.fuse(text, m.encode_visual(batch.visual), layers=self.layer)
        h = self.dropout(fused.hidden)
        cls = F.normalize(h[:, 0], dim=-1)
        regions = F.normalize(h[:, fused.text_len:], dim=-1)
        return torch.einsum("brh,bh->br", regions, cls)

    def forward(self, batch: ReferringBatch, generator: torch.Generator | None = None) -> dict:
        scores, real = self.scores(batch), batch.visual.region_mask
        targets = batch.targets.to(scores.dtype)
        # averaged over every real region of the batch, as the authors' masked MSE
        loss = F.mse_loss(scores[real], targets[real])
        chosen = scores.masked_fill(~real, -math.inf).argmax(1, keepdim=True)
        acc = (targets.gather(1, chosen) >= HIT_IOU).float().mean()
        return {"loss": loss, "train_acc": acc.detach()}

    def get_extra_state(self) -> dict:
        return {"layer": self.layer}

    def set_extra_state(self, state: dict) -> None:
        if state["layer"] != self.layer:
            raise ValueError(f"checkpoint's layer {state['layer']} differs from {self.layer}")


def load_refexp(checkpoint: str | Path | dict) -> ReferringModel:
    """A fine-tuned ReferringModel from a checkpoint written by `finetune_refexp` (on CPU)."""
    return load_head(checkpoint, lambda mvp, extra: ReferringModel(mvp, extra.get("layer")))


@torch.no_grad()
def refer(model: ReferringModel, batch: SentenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen candidate index [B], its score [B]): the best-scored real region of each row."""
    model.eval()
    device = next(model.parameters()).device
    batch = batch.to(device)
    scores = model.scores(batch).masked_fill(~batch.visual.region_mask, -math.inf)
    best, chosen = scores.max(1)
    return chosen.cpu(), best.cpu()


def serve(model: ReferringModel, inputs: SentenceBatch, boxes) -> list[dict]:
    """Serving's cells (model/serving/heads.py): the box (pixels) of the region each expression
    refers to, one of its image's `boxes`, and its score."""
    chosen, score = refer(model, inputs)
    return [{"box": [float(v) for v in b[int(c)]], "box_score": float(s)}
            for b, c, s in zip(boxes, chosen, score)]


def predict(model: ReferringModel, data: ReferringData, batch_size: int = 64) -> np.ndarray:
    """The chosen candidate of every expression of `data`."""
    loader = DataLoader(data, batch_size=batch_size, collate_fn=data.collate)
    return np.concatenate([refer(model, b)[0].numpy() for b in loader] or [np.zeros(0, int)])


def _report(chosen, data: ReferringData) -> dict:
    """Accuracy of choosing candidate `chosen[i]` for expression i, with the dataset's counts.
    "chance": the expected accuracy of a uniformly random candidate, the mean over expressions of
    (#candidates at IoU >= 0.5) / #candidates, the issue's 1 / #candidates when exactly one
    candidate matches; "upper_bound": the share of expressions some candidate can answer."""
    n = len(data)
    hits = [float(t[int(c)] >= HIT_IOU) for c, t in zip(chosen, data.targets)]
    return {"refexp_acc": sum(hits) / n if n else 0.0,
            "chance": sum(float((t >= HIT_IOU).mean()) for t in data.targets) / n if n else 0.0,
            "upper_bound": 1 - data.n_gold_unreachable / n if n else 0.0,
            "n_expressions": n, "n_without_features": data.n_without_features,
            "n_gold_unreachable": data.n_gold_unreachable}


def evaluate_refexp(checkpoint_or_model, warehouse, split: str | None, dataset: str | None = None,
                    feature_set: str | None = None, batch_size: int = 64,
                    device: str | None = None) -> dict:
    """Referring accuracy of a fine-tuned model on a split (RefCOCO+: val, testA, testB):
    {"refexp_acc", "chance", "upper_bound", "n_expressions", "n_without_features",
    "n_gold_unreachable"} (see _report) and "largest_region_acc", the accuracy of always choosing
    the largest candidate. The feature set defaults to the model's."""
    model = fine_tuned(checkpoint_or_model, load_refexp, ReferringModel, device)
    feature_set = feature_set or model.cfg.feature_set
    if feature_set is None:
        raise ValueError("the model names no feature set: pass feature_set")
    data = ReferringData(warehouse, feature_set, model.cfg, split, dataset)
    return _report_with_prior(model, data, batch_size)


def largest_region(data: ReferringData) -> list[int]:
    """The candidate of largest area for each expression: a prior that needs no model (referred
    objects tend to be the salient ones)."""
    return [int(np.argmax(g[:, 4] * g[:, 5])) for g in
            (data.candidates(int(row)) for row in data.image_of)]


def baselines(data: ReferringData) -> dict:
    return {"largest_region": _report(largest_region(data), data)}


def _report_with_prior(model: ReferringModel, data: ReferringData, batch_size: int) -> dict:
    report = _report(predict(model, data, batch_size), data)
    report["largest_region_acc"] = baselines(data)["largest_region"]["refexp_acc"]
    return report


def _evaluate(model: ReferringModel, train: ReferringData, data: ReferringData, batch_size: int):
    report = _report_with_prior(model, data, batch_size)
    metrics = {k: report[k] for k in ("refexp_acc", "chance", "largest_region_acc",
                                      "n_gold_unreachable")}
    return report, baselines(data), metrics


TASK = HeadTask(
    name="refexp", score_key="train_acc",
    data=lambda wh, fs, cfg, split, dataset, train: ReferringData(wh, fs, cfg, split, dataset),
    model=lambda mvp, train: ReferringModel(mvp),
    evaluate=_evaluate,
    params=lambda train: {"n_train_gold_unreachable": train.n_gold_unreachable})


def finetune_refexp(warehouse, init_from, **kw) -> dict:
    """finetune_head for referring expressions (RefCOCO+ names its splits train / val / testA /
    testB): the cosine head trained with MSE to IoU, evaluated against chance and the largest
    region. The result has "n_train_gold_unreachable" too."""
    return finetune_head(TASK, warehouse, init_from, **kw)
