"""What a training run logs beside its losses (`diag/*`), to say whether the cross-modal stage
learns. Measured on one batch in eval mode with generators of their own, so a diagnosed run draws
the same masks and dropout as one that is not (exact resume holds)."""
from __future__ import annotations

import torch

from model import losses
from model.batch import PretrainBatch
from model.masking import IGNORE, mask_with_concepts
from model.training.task import PretrainTask

CROSS_LOSSES = ("itm", "mlm", "wpg")   # the losses whose gradient reaches the cross encoder


def other_image(image_index: torch.Tensor) -> torch.Tensor:
    """[B] for each row, the nearest following row (cyclically) that shows another image; the
    row itself when every row shows the same image."""
    b = len(image_index)
    rows = torch.arange(b, device=image_index.device)
    if b < 2:
        return rows
    following = (rows[:, None] + torch.arange(1, b, device=rows.device)) % b       # [B, B-1]
    differs = image_index[following] != image_index[:, None]
    first = differs.float().argmax(1)                                  # first True, 0 if none
    return torch.where(differs.any(1), following[rows, first], rows)


def gradient_norms(task: PretrainTask, batch: PretrainBatch, step: int) -> dict[str, float]:
    """`grad_norm_<loss>` into the cross encoder for each of the task's losses that reach it (is
    ITM's gradient starved next to MLM's?)."""
    params = [p for p in task.model.cross_encoder.parameters() if p.requires_grad]
    wanted = [k for k in CROSS_LOSSES if k in task.tcfg.losses]
    if not params or not wanted:
        return {}
    out = task(batch, torch.Generator().manual_seed(step))
    norms = {}
    for k in wanted:
        grads = torch.autograd.grad(out[k], params, retain_graph=True, allow_unused=True)
        norms[f"grad_norm_{k}"] = torch.linalg.vector_norm(
            torch.stack([g.norm() for g in grads if g is not None])).item()
    return norms


def itm_accuracies(task: PretrainTask, batch: PretrainBatch, step: int) -> dict[str, float]:
    """ITM accuracy on positives, random negatives and the training rule's negatives."""
    m = task.model
    generator = torch.Generator().manual_seed(step)
    batch = task.visible(batch)
    text_ids, text_mask, _ = task.text_input(batch, batch.token_ids, batch.concept_ids)
    text = m.encode_text(text_ids, text_mask)
    visual = m.encode_visual(batch.visual)
    sim = m.similarity(text.g, visual.g)
    same_text = torch.unique(batch.token_ids, dim=0, return_inverse=True)[1]
    known = batch.known_matches()
    out = {}
    for name, mode in (("chosen", task.tcfg.negatives_at(step)), ("random", "random")):
        ti, vi, y = losses.itm_negatives(sim, generator, batch.image_index, mode=mode,
                                         text_ids=same_text, matches=task.known_matches(batch))
        pred = m.itm_logits(m.fuse(text.take(ti), visual.take(vi))).argmax(1)
        correct = (pred == y).float()
        out["itm_acc_positive"] = correct[y == 1].mean().item()
        out[f"itm_acc_{name}_negative"] = correct[y == 0].mean().item()
        if known is not None and name == "chosen":   # negatives that truly match the caption
            out["itm_chosen_false_negatives"] = known[ti[y == 0], vi[y == 0]].float().mean().item()
    return out


def mlm_image_gap(task: PretrainTask, batch: PretrainBatch, step: int) -> dict[str, float]:
    """Masked-word accuracy with the caption's own image and with another batch image: no gap
    means the cross encoder does not use the image."""
    m, cfg = task.model, task.model.cfg
    generator = torch.Generator().manual_seed(step)
    batch = task.visible(batch)
    tokens, labels, concepts, _ = mask_with_concepts(
        batch.token_ids, task.word_special(batch), batch.concept_ids, batch.concept_spans,
        cfg.mask_id, task.word_range, task.concept_range, generator, task.tcfg.mask_prob,
        concept_mask=batch.concept_mask)
    ids, mask, concept_start = task.text_input(batch, tokens, concepts)
    text = m.encode_text(ids, mask)
    visual = m.encode_visual(batch.visual)
    sel = labels != IGNORE
    out = {}
    for name, images in (("matched", None), ("shuffled", other_image(batch.image_index))):
        v = visual if images is None else visual.take(images)
        words = m.fuse(text, v).text_hidden[:, :concept_start]
        pred = m.mlm_logits(words[sel]).argmax(-1)
        out[f"mlm_acc_{name}"] = (pred == labels[sel]).float().mean().item() if sel.any() else 0.0
    return out


def diagnose(task: PretrainTask, batch: PretrainBatch, step: int) -> dict[str, float]:
    """Every diagnostic the task's losses allow, as `diag/<name>` metrics."""
    was_training = task.training
    task.eval()
    try:
        out = gradient_norms(task, batch, step)
        with torch.no_grad():
            if "itm" in task.tcfg.losses:
                out.update(itm_accuracies(task, batch, step))
            if "mlm" in task.tcfg.losses:
                out.update(mlm_image_gap(task, batch, step))
    finally:
        task.train(was_training)
    return {f"diag/{k}": v for k, v in out.items()}
