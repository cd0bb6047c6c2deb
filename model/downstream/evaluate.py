"""Evaluate a pre-trained MVP on a held-out split.
Image-text retrieval (dual encoder, then ITM re-ranking; METHOD.md §4), ITM on held-out pairs,
and masked-word accuracy (MLM) against a majority-token baseline."""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from features.vocabulary import latest_vocab
from model.batch import PretrainBatch, assemble_text
from model.downstream.retrieval import (
    K_IMAGE,
    K_TEXT,
    ann_ranks,
    chance_recall_at_1,
    dual_ranks,
    rerank_recall,
)
from model.masking import IGNORE, mask_with_concepts
from model.mvp import MVP, TextOutput, VisualOutput
from model.training import distributed
from model.training.checkpoint import load_checkpoint, load_mvp
from model.training.config import TrainConfig
from model.training.data import PretrainData
from model.training.diagnostics import other_image
from model.training.pretrain import pick_feature_set
from model.training.task import PretrainTask
from warehouse.store import Warehouse

ANN_ABOVE = 1_000_000   # gallery images above which retrieval is searched through an index


@dataclass
class SplitEmbeddings:
    """Encoder outputs of a split, kept whole so the cross encoder can pair any caption with any
    image without encoding either again."""
    text: TextOutput        # one row per caption (hidden padded to the longest caption)
    images: VisualOutput    # one row per gallery image; hidden holds the REGION positions only
    text_image: torch.Tensor  # [n_text] gallery row of each caption's image

    @property
    def similarity(self) -> torch.Tensor:
        """[n_text, n_image] cosine similarity of the global vectors."""
        return self.text.g @ self.images.g.t()


def _batches(data: PretrainData, indices, batch_size: int, device):
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        yield data.batch(chunk).to(device)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _text_input(model: MVP, batch: PretrainBatch):
    cfg = model.cfg
    return assemble_text(batch.token_ids, batch.token_mask, batch.concept_ids,
                         batch.concept_mask, cfg.sep_id, cfg.pad_id)


def _cat_padded(parts: list[tuple[torch.Tensor, torch.Tensor]]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate (hidden [B, L, H], mask [B, L]) batches of different L along B, padding L."""
    L = max(h.shape[1] for h, _ in parts)
    hidden = torch.cat([F.pad(h, (0, 0, 0, L - h.shape[1])) for h, _ in parts])
    mask = torch.cat([F.pad(m, (0, L - m.shape[1])) for _, m in parts])
    return hidden, mask


@torch.no_grad()
def embed_split(model: MVP, data: PretrainData, batch_size: int = 64) -> SplitEmbeddings:
    """Encode every caption of `data` and every image of its gallery once (eval mode); the
    gallery holds each image of the split once, and a caption's gold image is its own."""
    was_training, device = model.training, _device(model)
    model.eval()
    try:
        texts, text_g = [], []
        for batch in _batches(data, np.arange(len(data)), batch_size, device):
            out = model.encode_text(*_text_input(model, batch)[:2])
            texts.append((out.hidden, out.mask))
            text_g.append(out.g)
        regions, region_g = [], []
        for out in _image_outputs(model, data, batch_size):
            regions.append((out.region_hidden, out.region_mask))
            region_g.append(out.g)
    finally:
        model.train(was_training)
    hidden, mask = _cat_padded(texts)
    text = TextOutput(hidden=hidden, mask=mask, g=torch.cat(text_g))
    # tags are dropped before fusion (METHOD.md §2): keep regions only, with an empty tag part
    hidden, mask = _cat_padded(regions)
    images = VisualOutput(hidden=hidden, tag_mask=mask[:, :0], region_mask=mask,
                          g=torch.cat(region_g))
    return SplitEmbeddings(text, images, torch.from_numpy(data.image_of).to(device))


def _image_outputs(model: MVP, data: PretrainData, batch_size: int):
    """encode_visual of each gallery image once, batch by batch; rows follow data.regions."""
    # one caption of each image brings its visual input
    rows, first = np.unique(data.image_of, return_index=True)
    assert (rows == np.arange(len(rows))).all(), "every gallery image has a caption"
    for batch in _batches(data, first, batch_size, _device(model)):
        yield model.encode_visual(batch.visual)


@torch.no_grad()
def gallery_vectors(model: MVP, data: PretrainData, batch_size: int = 64) -> torch.Tensor:
    """[n_image, dim] g_v of every image of `data` (rows follow data.regions.image_ids), in
    eval mode, holding nothing else of the encoder's output."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([out.g.float().cpu() for out in _image_outputs(model, data, batch_size)])
    finally:
        model.train(was_training)


def itm_scorer(model: MVP, emb: SplitEmbeddings):
    """p(match) of (caption, image) pairs (rows of `emb`) by the cross encoder."""
    @torch.no_grad()
    def score(text_rows: torch.Tensor, image_rows: torch.Tensor) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            fused = model.fuse(emb.text.take(text_rows.to(emb.text_image.device)),
                               emb.images.take(image_rows.to(emb.text_image.device)))
            return model.itm_logits(fused).float().softmax(-1)[:, 1].cpu()
        finally:
            model.train(was_training)
    return score


def scored_across_ranks(score, batch_size: int):
    """score_pairs for rerank_recall: each process scores its contiguous share of the pairs,
    `batch_size` at a time, and only the scores are gathered (every process gets all of them);
    one process scores them all."""
    def score_pairs(text_rows: torch.Tensor, image_rows: torch.Tensor) -> torch.Tensor:
        share = torch.arange(len(text_rows)).tensor_split(distributed.world_size())
        mine = share[distributed.rank()]
        scores = [score(text_rows[p], image_rows[p]).float().reshape(-1)
                  for p in mine.split(batch_size) if len(p)]
        mine = torch.cat(scores) if scores else torch.zeros(0)
        return torch.cat(distributed.gather_objects(mine))
    return score_pairs


def evaluate_retrieval(model: MVP, data: PretrainData, k_text: int = K_TEXT, k_image: int = K_IMAGE,
                       batch_size: int = 64, rerank_itm: bool = True,
                       ann_above: int = ANN_ABOVE) -> dict:
    """Dual-encoder R@1/5/10 both ways, and (`rerank_itm`) the same after ITM re-ranking of the
    top `k_text` captions per image and `k_image` images per caption, as rerank_* keys. Never
    an [n_text, n_image] matrix; under torchrun the processes share the ITM pairs. Galleries of
    more than `ann_above` images are searched through an index (ann_ranks; "ann": true)."""
    emb = embed_split(model, data, batch_size)
    text_image = emb.text_image.cpu()
    n_text, n_image = len(emb.text.g), len(emb.images.g)
    chance = chance_recall_at_1(text_image, n_image)
    ranking = ann_ranks if n_image > ann_above else dual_ranks
    ranks = ranking(emb.text.g.cpu(), emb.images.g.cpu(), text_image,
                    k_text=k_text if rerank_itm else 0, k_image=k_image if rerank_itm else 0)
    out = {"n_images": n_image, "n_captions": n_text, "chance_t2i_r1": chance["t2i"],
           "chance_i2t_r1": chance["i2t"], "ann": ranking is ann_ranks, **ranks.recalls()}
    if rerank_itm:
        out.update(itm_heldout(model, emb))
        reranked = rerank_recall(ranks, text_image,
                                 scored_across_ranks(itm_scorer(model, emb), batch_size))
        out.update({f"rerank_{k}": v for k, v in reranked.items()})
        out.update(rerank_k_text=min(k_text, n_text), rerank_k_image=min(k_image, n_image))
    return out


@torch.no_grad()
def itm_heldout(model: MVP, emb: SplitEmbeddings, seed: int = 0,
                batch_size: int = 256) -> dict:
    """ITM on every caption with its own image and with a uniformly drawn other image."""
    n_text, n_image = len(emb.text_image), emb.images.g.shape[0]
    if n_image < 2:
        return {}
    gold = emb.text_image.cpu()
    shift = torch.randint(1, n_image, (n_text,), generator=torch.Generator().manual_seed(seed))
    texts = torch.arange(n_text).repeat(2)
    images = torch.cat([gold, (gold + shift) % n_image])      # the second half: never the gold
    label = torch.cat([torch.ones(n_text), torch.zeros(n_text)])
    score = itm_scorer(model, emb)
    p = torch.cat([score(texts[s:s + batch_size], images[s:s + batch_size])
                   for s in range(0, len(texts), batch_size)])
    correct = ((p > 0.5).float() == label).float()
    return {"itm_loss": F.binary_cross_entropy(p.clamp(1e-7, 1 - 1e-7), label).item(),
            "itm_acc_positive": correct[:n_text].mean().item(),
            "itm_acc_random_negative": correct[n_text:].mean().item(),
            "itm_p_match_positive": p[:n_text].mean().item(),
            "itm_p_match_random_negative": p[n_text:].mean().item()}


def _masked_item(item: dict, task: PretrainTask, seed: int) -> tuple[dict, torch.Tensor]:
    """One caption masked by the training rule with a generator of (seed, caption id) alone:
    the positions do not depend on batching or on the order of the split."""
    cfg = task.model.cfg
    key = hashlib.sha256(f"{seed}:{item['caption_id']}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)
    ids = item["token_ids"][None]
    special = (ids == cfg.cls_id) | (ids == cfg.sep_id)   # an item has no padding
    tokens, labels, concepts, _ = mask_with_concepts(
        ids, special, item["concept_ids"][None], item["concept_spans"][None], cfg.mask_id,
        task.word_range, task.concept_range, generator, task.tcfg.mask_prob)
    return {**item, "token_ids": tokens[0], "concept_ids": concepts[0]}, labels[0]


@torch.no_grad()
def mlm_accuracy(model: MVP, data: PretrainData, seed: int = 0, mask_prob: float = 0.15,
                 majority_token: int | None = None, batch_size: int = 64) -> dict:
    """Accuracy of the masked-word predictions on `data`'s captions, and the accuracy of always
    predicting `majority_token` (default: the most frequent word of `data` itself; pass the
    training split's) on the same positions."""
    device = _device(model)
    if majority_token is None:
        majority_token = data.majority_word()
    # the task's random-replacement ranges, so the masks follow the training rule exactly
    task = PretrainTask(model, TrainConfig(mask_prob=mask_prob))
    correct = shuffled = baseline = total = 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(data), batch_size):
            masked = [_masked_item(data[i], task, seed)
                      for i in range(start, min(start + batch_size, len(data)))]
            batch = data.collate([item for item, _ in masked]).to(device)
            labels = torch.full_like(batch.token_ids, IGNORE)
            for row, (_, label) in enumerate(masked):
                labels[row, :len(label)] = label
            ids, mask, concept_start = _text_input(model, batch)
            visual = model.encode_visual(batch.visual)
            text = model.encode_text(ids, mask)
            sel = labels != IGNORE
            target = labels[sel]
            # with its own image, then another one: the gap is what the image contributes
            for images in (None, other_image(batch.image_index)):
                fused = model.fuse(text, visual if images is None else visual.take(images))
                pred = model.mlm_logits(fused.text_hidden[:, :concept_start][sel]).argmax(-1)
                if images is None:
                    correct += (pred == target).sum().item()
                else:
                    shuffled += (pred == target).sum().item()
            baseline += (target == majority_token).sum().item()
            total += target.numel()
    finally:
        model.train(was_training)
    return {"mlm_accuracy": correct / max(total, 1),
            "mlm_accuracy_shuffled_image": shuffled / max(total, 1),
            "mlm_majority_baseline": baseline / max(total, 1),
            "mlm_majority_token": majority_token, "mlm_masked_tokens": total}


def evaluate(checkpoint_or_model, warehouse, split: str = "test", feature_set: str | None = None,
             vocab: str | None = None, *, k_text: int = K_TEXT, k_image: int = K_IMAGE,
             batch_size: int = 64, mlm_seed: int = 0, mask_prob: float = 0.15,
             device: str | None = None) -> dict:
    """Retrieval and MLM metrics of a checkpoint (path or loaded dict) or model on `split`.
    The feature set and vocabulary default to the ones the model was built for. A stage-1
    checkpoint gets the dual-encoder metrics only."""
    recorded = None   # the train split's majority word, as its training run recorded it
    if isinstance(checkpoint_or_model, nn.Module):
        model, stage = getattr(checkpoint_or_model, "model", checkpoint_or_model), None
    else:
        state = (checkpoint_or_model if isinstance(checkpoint_or_model, dict)
                 else load_checkpoint(checkpoint_or_model))
        model, stage = load_mvp(state)
        recorded = (state.get("data_position") or {}).get("majority_word")
    if device is not None:
        model.to(device)
    cross_encoder_trained = stage != "stage1"
    cfg = model.cfg
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    spec = pick_feature_set(wh, feature_set or cfg.feature_set)
    vocab = vocab or cfg.vocab_version or latest_vocab(wh)
    data = PretrainData(wh, spec.id, vocab, cfg, split=split)
    if len(data) == 0:
        raise LookupError(f"no {split!r} captions with features in {spec.id}")

    out = {"split": split, "stage": stage or "model", "feature_set": spec.id, "vocab": vocab}
    out.update(evaluate_retrieval(model, data, k_text, k_image, batch_size,
                                  rerank_itm=cross_encoder_trained))
    if cross_encoder_trained:
        majority = recorded
        if majority is None:   # a checkpoint from before it was recorded
            train = PretrainData(wh, spec.id, vocab, cfg, split="train")
            majority = (train if len(train) else data).majority_word()
        out.update(mlm_accuracy(model, data, mlm_seed, mask_prob, majority, batch_size))
    return out


def results_rows(metrics: dict) -> list[tuple[str, str]]:
    """(metric, value) rows for a printed table: fractions as percentages with one decimal."""
    rows = []
    for name, value in metrics.items():
        if isinstance(value, float):
            # rsum: the sum of the six recalls in percent, as papers report it
            text = f"{100 * value:.1f}" if name.endswith("rsum") else f"{100 * value:.1f}%"
        else:
            text = str(value)
        rows.append((name, text))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--warehouse", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--feature-set")
    ap.add_argument("--vocab")
    ap.add_argument("--k-text", type=int, default=K_TEXT)
    ap.add_argument("--k-image", type=int, default=K_IMAGE)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device")
    ap.add_argument("--json", help="also write the metrics to this JSON file")
    args = ap.parse_args(argv)
    # under torchrun (WORLD_SIZE > 1) the processes share the ITM re-ranking; rank 0 reports
    with distributed.distributed(args.device) as device:
        metrics = evaluate(args.checkpoint, args.warehouse, args.split, args.feature_set,
                           args.vocab, k_text=args.k_text, k_image=args.k_image,
                           batch_size=args.batch_size, device=device)
        reports = distributed.is_main()
    if not reports:
        return
    width = max(len(k) for k in metrics)
    for name, value in results_rows(metrics):
        print(f"{name:<{width}}  {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
