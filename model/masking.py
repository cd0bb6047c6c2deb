"""Masking for the masked-prediction tasks (METHOD.md §3) by BERT's 80/10/10 rule: MLM on caption
tokens, MCR on tags and on the caption's phrase concepts. Every random number comes from
`generator`, and the same numbers are drawn whatever the data: a seeded generator, the same masks."""
import torch

IGNORE = -100  # label of positions that are not prediction targets


def _uniform(shape, generator, device) -> torch.Tensor:
    """U[0, 1) drawn on the generator's device (a CPU generator cannot draw on CUDA), then moved."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def _corrupt(ids: torch.Tensor, selected: torch.Tensor, mask_id: int, random_range,
             generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply 80% [MASK] / 10% random id from the half-open `random_range` / 10% keep at the
    `selected` positions of `ids`.

    Returns (corrupted ids, labels) with labels = original id where selected, else -100.
    """
    lo, hi = random_range
    action = _uniform(ids.shape, generator, ids.device)
    gen_device = generator.device if generator is not None else ids.device
    random_ids = torch.randint(lo, hi, ids.shape, generator=generator,
                               device=gen_device).to(ids.device, ids.dtype)
    out = ids.clone()
    out = torch.where(selected & (action < 0.8), torch.full_like(ids, mask_id), out)
    out = torch.where(selected & (action >= 0.8) & (action < 0.9), random_ids, out)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE))
    return out, labels


def mask_tokens(ids: torch.Tensor, special_mask: torch.Tensor, vocab_range, generator,
                prob: float = 0.15, *, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask caption tokens for MLM.

    ids:          [B, L] long token ids.
    special_mask: [B, L] bool, True where a position must never be selected ([CLS], [SEP], [PAD],
                  concept slots).
    vocab_range:  (lo, hi) of the random replacements, e.g. the BPE words without sot/eot.
    Returns (masked_ids [B, L], labels [B, L]), labels -100 except at selected positions.
    """
    selected = (_uniform(ids.shape, generator, ids.device) < prob) & ~special_mask
    return _corrupt(ids, selected, mask_id, vocab_range, generator)


def mask_tags(tag_ids: torch.Tensor, tag_mask: torch.Tensor, tag_range, generator,
              prob: float = 0.15, *, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask the visual stream's tag tokens for MCR.

    tag_ids:  [B, T] long tag token ids.
    tag_mask: [B, T] bool, True at real tags; False at [CLS]/[SEP]/padding, which are never selected.
    tag_range: (lo, hi) of the random replacement tags.
    Returns (masked_tag_ids [B, T], tag_labels [B, T]).
    """
    return mask_tokens(tag_ids, ~tag_mask, tag_range, generator, prob, mask_id=mask_id)


def mask_regions(regions: torch.Tensor, region_mask: torch.Tensor, generator,
                 prob: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the features of a `prob` share of the real regions (MAMO's masked image modelling).
    Returns (masked regions [B, R, D], the masked positions [B, R] bool)."""
    chosen = (_uniform(region_mask.shape, generator, regions.device) < prob) & region_mask.bool()
    return regions.masked_fill(chosen[..., None], 0.0), chosen


def mask_with_concepts(token_ids: torch.Tensor, token_special: torch.Tensor,
                       concept_ids: torch.Tensor, concept_spans: torch.Tensor, mask_id: int,
                       word_range, concept_range, generator, prob: float = 0.15,
                       concept_mask: torch.Tensor | None = None):
    """Mask caption tokens (MLM) and phrase concepts (text-side MCR) without leakage: a concept is
    ALWAYS [MASK] when a token of its span is selected, as a kept (man, ride, horse) would give a
    masked "horse" away (the authors' `random_phrases` rules the same). Other concepts are selected
    with `prob`, with 80/10/10 from `concept_range`. concept_spans [B, C, 2]: half-open BPE
    positions in `token_ids` ([CLS] counted); an empty one (concept not located) is masked at rate
    `prob` only. token_special [B, L]: never selected; concept_mask [B, C]: real (default all).
    Returns (masked tokens [B, L], token labels, masked concepts [B, C], concept labels)."""
    # draw order (fixed): token selection, action, random ids; then the same for concepts
    device = token_ids.device
    token_selected = (_uniform(token_ids.shape, generator, device) < prob) & ~token_special
    masked_tokens, token_labels = _corrupt(token_ids, token_selected, mask_id, word_range, generator)

    positions = torch.arange(token_ids.shape[1], device=device)            # [L]
    start, end = concept_spans[..., 0:1], concept_spans[..., 1:2]           # [B, C, 1]
    in_span = (positions >= start) & (positions < end)                      # [B, C, L]
    forced = (in_span & token_selected[:, None, :]).any(-1)                 # [B, C]
    concept_selected = forced | (_uniform(concept_ids.shape, generator, device) < prob)
    if concept_mask is not None:
        concept_selected = concept_selected & concept_mask
    masked_concepts, concept_labels = _corrupt(concept_ids, concept_selected, mask_id,
                                               concept_range, generator)
    # after the draws, so the random stream is the same with or without forced concepts
    masked_concepts = torch.where(forced & concept_selected, torch.full_like(concept_ids, mask_id),
                                  masked_concepts)
    return masked_tokens, token_labels, masked_concepts, concept_labels
