"""The pre-training task (METHOD.md §3): the model and its losses as one module, so DDP and
checkpoints wrap one thing; a PretrainBatch in, the losses of the config (TrainConfig.losses) out."""
from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from model import losses
from model.batch import PretrainBatch, assemble_text
from model.masking import IGNORE, mask_regions, mask_tags, mask_with_concepts
from model.mvp import MVP
from model.training import distributed
from model.training.config import TrainConfig

# The MVP parts (top-level attribute names) each loss's gradient reaches; tests/test_variants.py
# checks this against a real backward for every stage and variant.
_TEXT = ("embed", "text_pos", "text_ln", "text_encoder")
_VISUAL = ("embed", "tag_pos", "visual_segment", "region_embed", "visual_ln", "visual_encoder")
REACHES = {
    "vsc": _TEXT + _VISUAL + ("text_proj", "visual_proj", "logit_scale"),
    "mcr": _VISUAL + ("mcr_transform", "mcr_bias"),
    "text_mcr": _TEXT + ("mcr_transform",),
    "itm": _TEXT + _VISUAL + ("cross_encoder", "pooler", "itm_head"),
    "mlm": _TEXT + _VISUAL + ("cross_encoder", "mlm_transform", "mlm_bias"),
    "wpg": _TEXT + _VISUAL + ("cross_encoder",),
    "psl": _VISUAL + ("mcr_transform",),
    "mamo": _TEXT + _VISUAL + ("cross_encoder", "mlm_transform", "mlm_bias"),  # explicit: a word
    "xmm": _TEXT + _VISUAL + ("cross_encoder", "mlm_transform", "mlm_bias"),
}


class PretrainTask(nn.Module):
    """Wraps the model with its losses so that one module (and one DDP wrapper) holds every
    trainable parameter. forward returns the unweighted losses of the stage and `loss`, their
    weighted sum (what backward runs on)."""

    def __init__(self, model: MVP, tcfg: TrainConfig):
        super().__init__()
        cfg = model.cfg
        if cfg.n_concepts < 1:
            raise ValueError("the pre-training task needs a concept vocabulary (n_concepts >= 1)")
        self.model, self.tcfg = model, tcfg
        self.step = 0   # the optimizer step, set by the Trainer: the negative curriculum reads it
        # CLIP's BPE puts sot/eot at the end of its vocabulary: random replacements stay below them
        self.word_range = (0, min(cfg.cls_id, cfg.sep_id))
        self.concept_range = (cfg.concept_offset, cfg.vocab_size)
        # freeze what no loss of the stage reaches (stage1: cross encoder, pooler, ITM head), so
        # DDP needs no find_unused_parameters and AdamW never touches them
        reached = {part for loss in tcfg.losses for part in REACHES[loss]}
        for name, param in model.named_parameters():
            param.requires_grad_(name.split(".")[0] in reached)
        # MAMO's momentum teacher: built now (DDP sees the module whole from the start), its
        # weights copied from the model on the first step, when init weights are loaded
        self.teacher = None
        if "mamo" in tcfg.losses and tcfg.mamo_momentum > 0:
            self.teacher = copy.deepcopy(model).requires_grad_(False)
            self.register_buffer("teacher_ready", torch.tensor(False))

    def forward(self, batch: PretrainBatch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Two passes: clean text and tags for VSC, ITM and WPG (so ITM's hard negatives are picked
        by the real similarity), masked ones for MCR and MLM. A loss not in the set is not run."""
        m, cfg, p = self.model, self.model.cfg, self.tcfg.mask_prob
        need = set(self.tcfg.losses)
        out: dict[str, torch.Tensor] = {}
        batch = self.visible(batch)

        # ---- masking (draw order fixed: text, then tags) ----
        word_special = self.word_special(batch)
        m_tokens, token_labels, m_concepts, concept_labels = mask_with_concepts(
            batch.token_ids, word_special, batch.concept_ids, batch.concept_spans, cfg.mask_id,
            self.word_range, self.concept_range, generator, p, concept_mask=batch.concept_mask)
        tag_ids = batch.visual.tag_ids
        real_tags = batch.visual.tag_mask.bool() & (tag_ids != cfg.cls_id) & (tag_ids != cfg.sep_id)
        m_tags, tag_labels = mask_tags(tag_ids, real_tags, self.word_range, generator, p,
                                       mask_id=cfg.mask_id)
        m_image = dataclasses.replace(batch.visual, tag_ids=m_tags)
        if "mamo" in need:   # drawn last: without MAMO every other mask stays as it was
            regions, masked_regions = mask_regions(batch.visual.regions,
                                                   batch.visual.region_mask, generator, p)
            m_image = dataclasses.replace(m_image, regions=regions)
        if "xmm" in need:   # its own region draw, after every other: the rest stays as it was
            xmm_regions, xmm_masked = mask_regions(batch.visual.regions,
                                                   batch.visual.region_mask, generator, p)

        # ---- clean pass: VSC, and the similarity that picks ITM's negatives ----
        text_ids, text_mask, concept_start = self.text_input(batch, batch.token_ids,
                                                             batch.concept_ids)
        if need & {"vsc", "itm", "wpg", "psl", "mamo", "xmm"}:
            text = m.encode_text(text_ids, text_mask)
            visual = m.encode_visual(batch.visual)
            sim = m.similarity(text.g, visual.g)
        if "mamo" in need and self.teacher is not None:
            teacher_fused = self._teacher_fused(text_ids, text_mask, batch.visual)
        if "vsc" in need:
            out["vsc"] = (losses.vsc(sim) if self.tcfg.negatives_scope == "rank"
                          else self._global_vsc(text.g, visual.g, batch.image_index))

        if "psl" in need:   # the caption's concepts from the image's [CLS], scored as MCR's are
            logits = self._concept_logits(visual.hidden[:, 0])
            out["psl"] = losses.psl(logits, self.concept_targets(batch, logits.shape[1]))

        # ---- masked pass: MCR (visual tags, optionally text concepts) ----
        if need & {"mcr", "mlm", "mamo"}:
            m_visual = m.encode_visual(m_image)
        if "mcr" in need:
            sel = tag_labels != IGNORE  # score only masked positions: the word vocabulary is wide
            out["mcr"] = losses.mcr(m.mcr_logits(m_visual.tag_hidden[sel]), tag_labels[sel])
        if need & {"text_mcr", "mlm", "mamo", "xmm"}:
            m_text = m.encode_text(*self.text_input(batch, m_tokens, m_concepts)[:2])
        if "text_mcr" in need:
            C = batch.concept_ids.shape[1]
            h = m_text.hidden[:, concept_start:concept_start + C]
            sel = concept_labels != IGNORE
            out["text_mcr"] = losses.mcr(self._concept_logits(h[sel]),
                                         concept_labels[sel] - cfg.concept_offset)

        # ---- ITM on clean pairs; WPG on its positive half (no extra fused pass) ----
        B, C = len(batch), batch.concept_ids.shape[1]
        if "itm" in need:
            # ids of the caption texts: rows of identical tokens share one
            text_ids = torch.unique(batch.token_ids, dim=0, return_inverse=True)[1]
            ti, vi, y = losses.itm_negatives(sim.detach(), generator, batch.image_index,
                                             mode=self.tcfg.negatives_at(self.step),
                                             text_ids=text_ids, matches=self.known_matches(batch))
            fused = m.fuse(text.take(ti), visual.take(vi))
            out["itm"] = losses.itm(m.itm_logits(fused), y)
            pos = fused.take(torch.arange(B, device=sim.device))  # entries 0..B-1: (i, i)
        elif need & {"wpg", "mamo"}:
            pos = m.fuse(text, visual)
        if "wpg" in need:
            # phrases: EVERY real concept position; the batch does not say which concepts are
            # objects, and all are phrases parsed from the caption
            out["wpg"] = losses.wpg(pos.text_hidden[:, concept_start:concept_start + C],
                                    batch.concept_mask.bool(), pos.region_hidden,
                                    batch.visual.region_mask.bool(), generator).loss
        if need & {"mlm", "mamo"}:
            # ---- masked text fused with its own masked image, positives only: MLM, MAMO ----
            m_fused = m.fuse(m_text, m_visual)
        if "mlm" in need:
            words = m_fused.text_hidden[:, :concept_start]
            sel = token_labels != IGNORE
            out["mlm"] = losses.mlm(m.mlm_logits(words[sel]), token_labels[sel])
        if "xmm" in need:   # masked words with the whole image, masked regions with the caption
            words = m.fuse(m_text, visual).text_hidden[:, :concept_start]
            sel = token_labels != IGNORE
            seen = m.encode_visual(dataclasses.replace(batch.visual, regions=xmm_regions))
            with_caption = m.fuse(text, seen)
            v = batch.visual
            own = m.region_embed(torch.cat([v.regions, v.geometry], dim=-1).to(words.dtype))
            out["xmm"] = losses.xmm(m.mlm_logits(words[sel]), token_labels[sel],
                                    with_caption.region_hidden[xmm_masked], own[xmm_masked])
        if "mamo" in need:   # the masked regions recover their unmasked state and/or label
            clean = pos if self.teacher is None else teacher_fused
            out["mamo"] = self._mamo(m_fused.region_hidden[masked_regions],
                                     clean.region_hidden[masked_regions],
                                     batch.visual.region_labels, masked_regions)

        out["loss"] = sum(self.tcfg.weight(k) * v for k, v in out.items())
        return out

    def _mamo(self, predicted: torch.Tensor, clean: torch.Tensor, labels: torch.Tensor | None,
              masked: torch.Tensor) -> torch.Tensor:
        """MAMO's loss on the masked regions' fused states: the implicit target (their clean
        states), the explicit one (their label words), or the mean of the two."""
        target = self.tcfg.mamo_target
        parts = []
        if target in ("implicit", "both"):
            parts.append(losses.mamo(predicted, clean))
        if target in ("explicit", "both"):
            if labels is None:
                raise ValueError("MAMO's explicit target needs region labels in the batch")
            parts.append(losses.mamo_explicit(self.model.mlm_logits(predicted), labels[masked]))
        return sum(parts) / len(parts)

    @torch.no_grad()
    def _teacher_fused(self, text_ids: torch.Tensor, text_mask: torch.Tensor, visual):
        """The momentum teacher's unmasked fused pass (the implicit target's source)."""
        if not self.teacher_ready:
            self.teacher.load_state_dict(self.model.state_dict())
            self.teacher_ready.fill_(True)
        t = self.teacher
        return t.fuse(t.encode_text(text_ids, text_mask), t.encode_visual(visual))

    @torch.no_grad()
    def after_step(self) -> None:
        """After each optimizer step: teacher <- m * teacher + (1 - m) * model."""
        if self.teacher is None or not self.teacher_ready:
            return
        m = self.tcfg.mamo_momentum
        for t, s in zip(self.teacher.parameters(), self.model.parameters()):
            t.mul_(m).add_(s.detach(), alpha=1 - m)

    def training_state(self) -> dict | None:
        """What a resumed run needs beyond the model's weights: the momentum teacher."""
        if self.teacher is None:
            return None
        return {"teacher": self.teacher.state_dict(), "teacher_ready": bool(self.teacher_ready)}

    def load_training_state(self, state: dict | None) -> None:
        if self.teacher is None or state is None:
            return
        self.teacher.load_state_dict(state["teacher"])
        self.teacher_ready.fill_(state["teacher_ready"])

    def known_matches(self, batch: PretrainBatch) -> torch.Tensor | None:
        """The pairs ITM must not take as negatives beyond one image's and one text's: those the
        labelled regions prove to match, when the config drops them."""
        return batch.known_matches() if self.tcfg.drop_false_negatives else None

    def visible(self, batch: PretrainBatch) -> PretrainBatch:
        """The batch as this task's model sees it (no concepts or tags with `concepts: false`)."""
        return batch if self.tcfg.concepts else without_concepts(batch, self.model.cfg)

    def word_special(self, batch: PretrainBatch) -> torch.Tensor:
        """[B, L] True where a caption position is never masked: padding, [CLS], [SEP]."""
        cfg = self.model.cfg
        return (~batch.token_mask.bool() | (batch.token_ids == cfg.cls_id)
                | (batch.token_ids == cfg.sep_id))

    def text_input(self, batch: PretrainBatch, token_ids, concept_ids):
        """(ids, mask, concept start) of the text encoder's input for these tokens/concepts."""
        cfg = self.model.cfg
        return assemble_text(token_ids, batch.token_mask, concept_ids, batch.concept_mask,
                             cfg.sep_id, cfg.pad_id)

    def _global_vsc(self, g_t: torch.Tensor, g_v: torch.Tensor, image_index: torch.Tensor
                    ) -> torch.Tensor:
        """VSC of this rank's pairs against the whole batch gathered over the ranks; image_index
        is a row of the dataset every rank reads, so equal values are one image on any rank."""
        (all_t, all_v, all_images), start = distributed.gather_with_grad(
            g_t, g_v, image_index)
        rows = torch.arange(len(g_t), device=g_t.device)
        exclude = image_index[:, None] == all_images[None]
        exclude[rows, start + rows] = False
        m = self.model
        return losses.vsc(m.similarity(g_t, all_v), m.similarity(g_v, all_t), start + rows,
                          exclude)

    def concept_targets(self, batch: PretrainBatch, n: int) -> torch.Tensor:
        """[B, n] 1.0 at each concept the caption mentions (ids without the word offset)."""
        targets = torch.zeros(len(batch), n + 1, device=batch.concept_ids.device)
        ids = (batch.concept_ids - self.model.cfg.concept_offset).clamp(0, n)
        targets.scatter_(1, torch.where(batch.concept_mask.bool(), ids, n), 1.0)
        return targets[:, :n]   # column n collected the padding

    def _concept_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., hidden] -> [..., n_concepts]: the MCR transform scored against the CONCEPT rows of
        the shared table (concepts are targets only in text-side MCR)."""
        m = self.model
        return F.linear(m.mcr_transform(hidden), m.embed.weight[m.cfg.concept_offset:])


def without_concepts(batch: PretrainBatch, cfg) -> PretrainBatch:
    """The batch as the no-concept variant sees it: no concept tokens, tags `[CLS] [SEP]`."""
    B = len(batch)
    tags = torch.tensor([cfg.cls_id, cfg.sep_id], device=batch.token_ids.device).repeat(B, 1)
    visual = dataclasses.replace(batch.visual, tag_ids=tags,
                                 tag_mask=torch.ones_like(tags, dtype=torch.bool))
    return dataclasses.replace(
        batch, concept_ids=batch.concept_ids[:, :0], concept_mask=batch.concept_mask[:, :0],
        concept_spans=batch.concept_spans[:, :0], visual=visual)
