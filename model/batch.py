"""The batches: the contract between the data paths (model/training/data.py) and the model and
training task (model/training/task.py). Masks are bool with True on real entries."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch


class TensorBatch:
    """A dataclass batch whose tensor fields (and nested batches) move to a device together; the
    rows of its first field are its samples."""

    def to(self, device, non_blocking: bool = True):
        return type(self)(**{f.name: (v.to(device, non_blocking=True)
                                      if isinstance(v, (torch.Tensor, TensorBatch)) else v)
                             for f in fields(self) for v in [getattr(self, f.name)]})

    def __len__(self) -> int:
        return getattr(self, fields(self)[0].name).shape[0]

    def take(self, rows: torch.Tensor):
        """These rows (an index or a bool mask) of every tensor field and nested batch; other
        fields are kept whole."""
        return type(self)(**{f.name: (v.take(rows) if isinstance(v, TensorBatch)
                                      else v[rows] if isinstance(v, torch.Tensor) else v)
                             for f in fields(self) for v in [getattr(self, f.name)]})


@dataclass
class VisualInputs(TensorBatch):
    """What `MVP.encode_visual` reads: tags then regions, the same in every batch kind."""
    tag_ids: torch.Tensor         # [B, Lg] long: [CLS] region-label BPE tokens [SEP], then pad_id
    tag_mask: torch.Tensor        # [B, Lg] bool
    regions: torch.Tensor         # [B, R, feat_dim] float (a feature set's float16 as stored:
    #                               the model casts it where it reads it)
    geometry: torch.Tensor        # [B, R, 6] float
    region_mask: torch.Tensor     # [B, R] bool
    # [B, R] long: each region's label as one word (model/text.py label_word), -100 where it has
    # none and on padding; MAMO's explicit target. None where the input has no labels (serving)
    region_labels: torch.Tensor | None = None


@dataclass
class SentenceBatch(TensorBatch):
    """One sentence about one image per row (a question, a hypothesis, an expression): what a
    fine-tuned head reads, from the warehouse or from a serving request alike."""
    token_ids: torch.Tensor       # [B, L] long: [CLS] sentence concepts [SEP] tags [SEP], pad_id
    token_mask: torch.Tensor      # [B, L] bool
    visual: VisualInputs


@dataclass
class PretrainBatch(TensorBatch):
    """Words and concepts kept apart, so that masking can hide a concept whenever a word in it is
    masked (model/masking.py); `assemble_text` then builds the model input."""
    token_ids: torch.Tensor       # [B, Lw] long: [CLS] caption BPE tokens, then pad_id
    token_mask: torch.Tensor      # [B, Lw] bool
    concept_ids: torch.Tensor     # [B, C] long, already offset by cfg.concept_offset; pad_id pads
    concept_mask: torch.Tensor    # [B, C] bool
    concept_spans: torch.Tensor   # [B, C, 2] long: [start, end) positions in token_ids (may be
    #                               empty, start == end, when a concept's words were truncated)
    visual: VisualInputs
    image_index: torch.Tensor     # [B] long: equal values = same image (no ITM negative there)
    caption_ids: list[str]
    image_ids: list[str]
    # [B, K] long: image_index values of the OTHER batch images each caption is provably true of
    # (features/caption_truth.py), -1 pads; None where the data path does not know
    also_true: torch.Tensor | None = None

    def known_matches(self) -> torch.Tensor | None:
        """[B, B] bool: caption i is provably true of row j's image (beyond its own)."""
        if self.also_true is None:
            return None
        return (self.also_true[:, :, None] == self.image_index[None, None, :]).any(1)


def assemble_text(token_ids: torch.Tensor, token_mask: torch.Tensor, concept_ids: torch.Tensor,
                  concept_mask: torch.Tensor, sep_id: int, pad_id: int
                  ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Model input `[CLS] words... concepts... [SEP]` (padding between parts is masked out) and
    the position where concepts start (Lw): concept c of a row sits at Lw + c."""
    B = token_ids.shape[0]
    sep = torch.full((B, 1), sep_id, dtype=token_ids.dtype, device=token_ids.device)
    ids = torch.cat([token_ids, concept_ids, sep], dim=1)
    ones = torch.ones((B, 1), dtype=torch.bool, device=token_ids.device)
    mask = torch.cat([token_mask.bool(), concept_mask.bool(), ones], dim=1)
    ids = torch.where(mask, ids, torch.full_like(ids, pad_id))
    return ids, mask, token_ids.shape[1]


def pad_rows(rows: list[torch.Tensor], value) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack rows of different lengths (first dim) padded with `value`, and the real-entry mask.
    Zero-length rows keep the trailing shape, so a batch without concepts is [B, 0, ...]."""
    n = max(r.shape[0] for r in rows)
    out = torch.full((len(rows), n, *rows[0].shape[1:]), value, dtype=rows[0].dtype)
    mask = torch.zeros((len(rows), n), dtype=torch.bool)
    for k, r in enumerate(rows):
        out[k, :len(r)] = r
        mask[k, :len(r)] = True
    return out, mask
