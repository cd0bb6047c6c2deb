"""Masking for the masked-prediction tasks (METHOD.md §3): MLM on caption tokens, MCR on tags and
on the caption's phrase concepts.

BERT's rule everywhere: each maskable position is selected with probability `prob` (0.15); a
selected position becomes [MASK] 80% of the time, a random id from a given range 10%, and stays
unchanged 10%. Labels hold the original id at selected positions and -100 (cross_entropy's
ignore_index) elsewhere.

Pure tensor functions: id ranges and the [MASK] id are arguments, so this module does not depend on
the vocabulary layout (words, then [MASK], [PAD], then concepts; see model config). Every random
number comes from `generator`, and the same numbers are drawn whatever the data, so a seeded
generator gives the same masks on every run. Ranges are half-open `(lo, hi)`.
"""
import torch

IGNORE = -100  # label of positions that are not prediction targets


def _uniform(shape, generator, device) -> torch.Tensor:
    """U[0, 1) drawn on the generator's device (a CPU generator cannot draw on CUDA), then moved."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def _corrupt(ids: torch.Tensor, selected: torch.Tensor, mask_id: int, random_range,
             generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply 80% [MASK] / 10% random / 10% keep at the `selected` positions of `ids`.

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


def mask_with_concepts(token_ids: torch.Tensor, token_special: torch.Tensor,
                       concept_ids: torch.Tensor, concept_spans: torch.Tensor, mask_id: int,
                       word_range, concept_range, generator, prob: float = 0.15,
                       concept_mask: torch.Tensor | None = None):
    """Mask the text side: caption tokens (MLM) and phrase concepts (text-side MCR), without leakage.

    A concept like (man, ride, horse) would give away a masked "horse" token, so a concept is
    ALWAYS replaced by [MASK] when one of the tokens of its span is selected (whatever that token's
    80/10/10 action; a kept or randomised concept would reveal the word, as the authors'
    `random_phrases` also rules). A concept with no selected token is selected on its own with
    probability `prob` and gets the usual 80/10/10, random ids drawn from `concept_range`.

    token_ids:     [B, L] long caption token ids.
    token_special: [B, L] bool, True where a token is never selected (specials, padding).
    concept_ids:   [B, C] long concept token ids (already offset into the shared table).
    concept_spans: [B, C, 2] long, half-open [start, end) of each concept IN POSITIONS OF
                   `token_ids` (BPE positions, [CLS] counted): the data path maps the concept's
                   caption words to the BPE tokens they were split into. An empty span (start ==
                   end) means the concept was not located; it is then masked at rate `prob` only.
    concept_mask:  [B, C] bool, True at real concepts (default: all); padding is never selected.
    Returns (masked_token_ids [B, L], token_labels [B, L], masked_concept_ids [B, C],
    concept_labels [B, C]).

    Draw order (fixed): token selection, token 80/10/10 action, token random ids, concept
    selection, concept action, concept random ids.
    """
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
