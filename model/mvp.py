"""The MVP model (METHOD.md §2): text, visual and cross encoders over one shared embedding table,
plus the heads the pre-training tasks read. Each encoder is its own method, so stage 1 never runs,
or builds gradients for, the cross encoder."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from model.batch import VisualInputs
from model.config import ModelConfig
from model.encoders import Encoder

GEOMETRY_DIM = 6  # [x1/W, y1/H, x2/W, y2/H, w/W, h/H]
TAG, REGION = 0, 1  # segment ids telling the visual encoder tag tokens from regions


class _Batch:
    def take(self, index: torch.Tensor):
        """The same output for batch rows `index` (e.g. hard negatives for ITM)."""
        return type(self)(**{f.name: (v[index] if isinstance(v, torch.Tensor) else v)
                             for f in fields(self) for v in [getattr(self, f.name)]})


@dataclass
class TextOutput(_Batch):
    hidden: torch.Tensor   # [B, Lt, hidden] text-encoder output, position 0 = [CLS]
    mask: torch.Tensor     # [B, Lt] bool, True on real tokens
    g: torch.Tensor        # [B, embed_dim] unit-norm global vector g_t


@dataclass
class VisualOutput(_Batch):
    hidden: torch.Tensor       # [B, Lg + R, hidden]: tag positions (0 = [CLS]) then regions
    tag_mask: torch.Tensor     # [B, Lg] bool
    region_mask: torch.Tensor  # [B, R] bool
    g: torch.Tensor            # [B, embed_dim] unit-norm global vector g_v

    @property
    def tag_hidden(self) -> torch.Tensor:      # [B, Lg, hidden], what MCR predicts from
        return self.hidden[:, : self.tag_mask.shape[1]]

    @property
    def region_hidden(self) -> torch.Tensor:   # [B, R, hidden], what the cross encoder reads
        return self.hidden[:, self.tag_mask.shape[1]:]


@dataclass
class FusedOutput(_Batch):
    hidden: torch.Tensor   # [B, Lt + R, hidden]: text positions then region positions
    mask: torch.Tensor     # [B, Lt + R] bool
    pooled: torch.Tensor   # [B, hidden] tanh(Linear(h_fused[CLS])), what ITM reads
    text_len: int          # Lt, so the text/region split travels with the output

    @property
    def text_hidden(self) -> torch.Tensor:     # [B, Lt, hidden], what MLM predicts from
        return self.hidden[:, : self.text_len]

    @property
    def region_hidden(self) -> torch.Tensor:   # [B, R, hidden], what WPG grounds phrases in
        return self.hidden[:, self.text_len:]


class MVP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        H = cfg.hidden
        # One table: words, [MASK], [PAD], concepts. Text, tags and the MLM head all read it.
        self.embed = nn.Embedding(cfg.vocab_size, H)
        self.text_pos = nn.Embedding(cfg.max_text_len, H)
        self.tag_pos = nn.Embedding(cfg.max_tags, H)
        self.visual_segment = nn.Embedding(2, H)
        self.region_embed = nn.Linear(cfg.feat_dim + GEOMETRY_DIM, H)
        # per-stream LayerNorm: region projections and token embeddings start at different scales
        self.text_ln, self.visual_ln = nn.LayerNorm(H), nn.LayerNorm(H)
        self.drop = nn.Dropout(cfg.dropout)

        enc = dict(hidden=H, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout)
        self.text_encoder = Encoder(cfg.text_layers, **enc)
        self.visual_encoder = Encoder(cfg.visual_layers, **enc)
        self.cross_encoder = Encoder(cfg.cross_layers, **enc, disentangled=cfg.disentangled_fusion)

        self.text_proj = nn.Linear(H, cfg.embed_dim)     # W_t
        self.visual_proj = nn.Linear(H, cfg.embed_dim)   # W_v
        # VSC's learnable 1/temperature, used clamped at 100 as in CLIP
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature_init)))
        # MLM (fused caption positions) and MCR (visual tag positions) heads: each its own
        # transform and bias over one decoder, the word rows of the shared table (no copy), as the
        # authors' `half_mlm`; tags are BPE words, and concepts and specials are never targets
        self.mlm_transform = nn.Sequential(nn.Linear(H, H), nn.GELU(), nn.LayerNorm(H))
        self.mlm_bias = nn.Parameter(torch.zeros(cfg.word_vocab))
        self.mcr_transform = nn.Sequential(nn.Linear(H, H), nn.GELU(), nn.LayerNorm(H))
        self.mcr_bias = nn.Parameter(torch.zeros(cfg.word_vocab))
        self.pooler = nn.Sequential(nn.Linear(H, H), nn.Tanh())   # BERT-style, for ITM
        self.itm_head = nn.Linear(H, 2)

        self.apply(self._init_weights)
        # Fusion must learn text x image interactions through attention. With q, k at std 0.02
        # every logit q.k is ~0, attention is uniform and ITM waits hundreds of steps on that
        # saddle; at std 1/sqrt(H) logits start at O(1) and attention can select from step 0.
        for block in self.cross_encoder.blocks:
            for qkv in (block.attn.qkv, block.attn.qkv_second):
                if qkv is not None:
                    nn.init.normal_(qkv.weight[: 2 * H], std=H ** -0.5)

    @staticmethod
    def _init_weights(m: nn.Module):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    # ---- uni-modal encoders (stage 1) ----

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> TextOutput:
        """ids [B, Lt] (`[CLS] tokens... concepts... [SEP]` then padding, concept ids already
        offset by cfg.concept_offset), mask [B, Lt]. A batch may pad BETWEEN a row's words and its
        concepts (assemble_text lines concepts up after the batch's longest caption); positions
        count real tokens only, so a row's encoding does not depend on the rows it is batched with."""
        _check(mask.shape == ids.shape, f"text mask {tuple(mask.shape)} != ids {tuple(ids.shape)}")
        mask = mask.bool()
        # the padded width may exceed max_text_len (words padded to the longest caption, then
        # concepts); what must fit the position table is each row's count of real tokens
        longest = int(mask.sum(1).max()) if len(mask) else 0
        _check(longest <= self.cfg.max_text_len,
               f"text length {longest} > max_text_len {self.cfg.max_text_len}")
        pos = (mask.long().cumsum(1) - 1).clamp(min=0)  # [B, Lt]; pads are masked anyway
        x = self.drop(self.text_ln(self.embed(ids) + self.text_pos(pos)))
        h = self.text_encoder(x, mask)
        return TextOutput(hidden=h, mask=mask, g=F.normalize(self.text_proj(h[:, 0]), dim=-1))

    def encode_visual(self, visual: VisualInputs) -> VisualOutput:
        cfg = self.cfg
        tag_ids, tag_mask, regions = visual.tag_ids, visual.tag_mask, visual.regions
        geometry, region_mask = visual.geometry, visual.region_mask
        B, Lg = tag_ids.shape
        R = regions.shape[1]
        _check(Lg <= cfg.max_tags, f"tag length {Lg} > max_tags {cfg.max_tags}")
        _check(R <= cfg.max_regions, f"{R} regions > max_regions {cfg.max_regions}")
        _check(tag_mask.shape == tag_ids.shape,
               f"tag mask {tuple(tag_mask.shape)} != tag ids {tuple(tag_ids.shape)}")
        _check(regions.shape == (B, R, cfg.feat_dim),
               f"regions {tuple(regions.shape)}, expected {(B, R, cfg.feat_dim)}")
        _check(geometry.shape == (B, R, GEOMETRY_DIM),
               f"geometry {tuple(geometry.shape)}, expected {(B, R, GEOMETRY_DIM)}")
        _check(region_mask.shape == (B, R),
               f"region mask {tuple(region_mask.shape)}, expected {(B, R)}")
        pos = torch.arange(Lg, device=tag_ids.device)
        tags = self.embed(tag_ids) + self.tag_pos(pos) + self.visual_segment.weight[TAG]
        # regions carry no position: their order in the batch is arbitrary
        regs = self.region_embed(torch.cat([regions, geometry], dim=-1).to(tags.dtype))
        regs = regs + self.visual_segment.weight[REGION]
        x = self.drop(self.visual_ln(torch.cat([tags, regs], dim=1)))
        tag_mask, region_mask = tag_mask.bool(), region_mask.bool()
        h = self.visual_encoder(x, torch.cat([tag_mask, region_mask], dim=1))
        return VisualOutput(hidden=h, tag_mask=tag_mask, region_mask=region_mask,
                            g=F.normalize(self.visual_proj(h[:, 0]), dim=-1))

    # ---- cross-modal encoder (stage 2) ----

    def fuse(self, text: TextOutput, visual: VisualOutput, layers: int | None = None
             ) -> FusedOutput:
        """Cross encoder over [all text positions ; region positions]. The masks travel inside
        the outputs; pair text i with image j by `text.take(idx)` / `visual.take(idx)` first.
        `layers`: the states after the first this many cross layers (None: all; model/encoders.py
        Encoder), for heads that read an intermediate fusion layer."""
        _check(text.hidden.shape[0] == visual.hidden.shape[0],
               f"batch sizes differ: text {text.hidden.shape[0]}, visual {visual.hidden.shape[0]}")
        x = torch.cat([text.hidden, visual.region_hidden], dim=1)
        mask = torch.cat([text.mask, visual.region_mask], dim=1)
        h = self.cross_encoder(x, mask, split=text.hidden.shape[1], layers=layers)
        return FusedOutput(hidden=h, mask=mask, pooled=self.pooler(h[:, 0]),
                           text_len=text.hidden.shape[1])

    # ---- heads ----

    def similarity(self, g_t: torch.Tensor, g_v: torch.Tensor) -> torch.Tensor:
        """[B_text, B_image] cosine similarities times 1/temperature (positives on the diagonal)."""
        return self.logit_scale.exp().clamp(max=100.0) * g_t @ g_v.t()

    @property
    def temperature(self) -> float:
        return 1.0 / min(self.logit_scale.exp().item(), 100.0)

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., hidden] -> [..., word_vocab]. Gather the masked positions first: the word
        vocabulary is wide, so scoring every position wastes memory."""
        return F.linear(self.mlm_transform(hidden), self.word_embeddings, self.mlm_bias)

    def mcr_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., hidden] -> [..., word_vocab] from the visual encoder's tag positions."""
        return F.linear(self.mcr_transform(hidden), self.word_embeddings, self.mcr_bias)

    def itm_logits(self, fused: FusedOutput) -> torch.Tensor:
        """[B, 2]: class 1 = the text matches the image."""
        return self.itm_head(fused.pooled)

    @property
    def word_embeddings(self) -> torch.Tensor:
        """[word_vocab, hidden], a view of the shared table (same storage): the MLM decoder."""
        return self.embed.weight[: self.cfg.word_vocab]


def _check(ok: bool, msg: str):
    if not ok:
        raise ValueError(msg)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weight matrices; none on biases, norms, embeddings, temperature.
    Works on any module holding an MVP (a training task, a DDP wrapper)."""
    no_decay_ids = set()
    for m in model.modules():
        if isinstance(m, (nn.Embedding, nn.LayerNorm)):
            no_decay_ids.update(id(p) for p in m.parameters(recurse=False))
    decay, no_decay = [], []
    for p in model.parameters():  # deduplicated by nn.Module
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or id(p) in no_decay_ids else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]
