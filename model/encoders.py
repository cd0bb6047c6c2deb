"""A pre-LayerNorm transformer encoder with padding masks, shared by the text, visual and
cross-modal encoders of MVP."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def attention_bias(mask: torch.Tensor) -> torch.Tensor:
    """Key-padding mask [B, L] (True = real token) -> SDPA boolean mask [B, 1, 1, L] (True = may
    attend). Padded *queries* still attend to the real keys, so their outputs stay finite; callers
    ignore them. Every row needs at least one real key ([CLS] always is)."""
    return mask[:, None, None, :]


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float, disentangled: bool = False):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        # DiMBERT: positions from `split` on (regions) have their own q/k/v projection
        self.qkv_second = nn.Linear(hidden, 3 * hidden) if disentangled else None
        self.proj = nn.Linear(hidden, hidden)
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, split: int | None = None
                ) -> torch.Tensor:
        B, L, H = x.shape
        if self.qkv_second is None or split is None:
            qkv = self.qkv(x)
        else:
            qkv = torch.cat([self.qkv(x[:, :split]), self.qkv_second(x[:, split:])], dim=1)
        # [B, L, 3H] -> three [B, heads, L, H/heads]
        q, k, v = qkv.view(B, L, 3, self.heads, H // self.heads).permute(2, 0, 3, 1, 4)
        # SDPA picks a fused kernel
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, L, H)))


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_ratio: int, dropout: float,
                 disentangled: bool = False):
        super().__init__()
        self.ln1 = nn.LayerNorm(hidden)
        self.attn = SelfAttention(hidden, heads, dropout, disentangled)
        self.ln2 = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, mlp_ratio * hidden), nn.GELU(),
                                 nn.Linear(mlp_ratio * hidden, hidden), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, bias: torch.Tensor, split: int | None = None
                ) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), bias, split)
        return x + self.mlp(self.ln2(x))


class Encoder(nn.Module):
    """`layers` blocks and a final LayerNorm: [B, L, H] inputs, [B, L] bool mask -> [B, L, H].
    Pre-LN rather than BERT's post-LN: MVP here trains from scratch, not from BERT weights, and
    pre-LN trains stably without a long warmup."""

    def __init__(self, layers: int, hidden: int, heads: int, mlp_ratio: int, dropout: float,
                 disentangled: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(Block(hidden, heads, mlp_ratio, dropout, disentangled)
                                    for _ in range(layers))
        self.ln_f = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, split: int | None = None,
                layers: int | None = None) -> torch.Tensor:
        """`split`: where the second modality's positions start (used when disentangled).
        `layers`: run only the first this many blocks (None: all), then the final LayerNorm, so an
        intermediate layer's states are normalised as a post-LN encoder's layer outputs are."""
        bias = attention_bias(mask)
        for block in self.blocks[:layers]:
            x = block(x, bias, split)
        return self.ln_f(x)
