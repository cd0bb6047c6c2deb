"""The five pre-training losses of MVP (METHOD.md §3), one pure function each, named after the task.
Similarity matrices are [B_text, B_image] with the matching pairs on the diagonal; every random
choice comes from `generator`."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE = -100   # label of positions that are not targets


def _masked_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over positions whose label is not -100; 0 (still on the graph, so
    backward and DDP see every parameter) when there are none."""
    logits = logits.reshape(-1, logits.shape[-1])
    labels = labels.reshape(-1)
    if not (labels != IGNORE).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=IGNORE)


def vsc(sim_logits: torch.Tensor, image_to_texts: torch.Tensor | None = None,
        targets: torch.Tensor | None = None, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Visual-semantic contrastive loss: symmetric InfoNCE, the mean of CE(text -> images) and
    CE(image -> texts).

    sim_logits: [B, N] = g_t @ g_v.T / temperature: this batch's texts against N candidate
    images (N = B in-batch; the gathered global batch under global negatives).
    image_to_texts: [B, N] this batch's images against the candidate texts (default:
    sim_logits.T, the square in-batch case). targets: [B] the column of each row's pair
    (default: the diagonal). exclude: [B, N] bool, columns that are neither the pair nor a
    negative (another caption of the same image): left out of both softmaxes.
    """
    if image_to_texts is None:
        image_to_texts = sim_logits.t()
    if targets is None:
        targets = torch.arange(sim_logits.shape[0], device=sim_logits.device)
    if exclude is not None:
        sim_logits = sim_logits.masked_fill(exclude, float("-inf"))
        image_to_texts = image_to_texts.masked_fill(exclude, float("-inf"))
    return (F.cross_entropy(sim_logits, targets) + F.cross_entropy(image_to_texts, targets)) / 2


def psl(concept_logits: torch.Tensor, concept_targets: torch.Tensor) -> torch.Tensor:
    """Pseudo-labelled keyword prediction (SIMLA): which of the vocabulary's concepts the
    caption mentions, predicted from the image alone; multi-label BCE, the mean over every
    (caption, concept) entry.

    concept_logits: [B, K]; concept_targets: [B, K] 1.0 where the caption has the concept.
    """
    return F.binary_cross_entropy_with_logits(concept_logits, concept_targets)


def mamo(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Masked region modelling with an implicit target (MAMO): the fused state at a masked
    region regresses the state the unmasked pass gives it (`target`, taken without gradient);
    the mean squared error over regions and dimensions, 0 with a grad path when none is masked.

    predicted, target: [N, hidden] for the N masked regions.
    """
    if predicted.numel() == 0:
        return predicted.sum() * 0.0
    return F.mse_loss(predicted, target.detach())


def mamo_explicit(label_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Masked region modelling with an explicit target (MAMO): the masked region's fused state
    names the region's label word; the mean CE over masked regions that have a label, 0 with a
    grad path when none has.

    label_logits: [N, V] at the N masked regions; labels: [N] word id, IGNORE without a label.
    """
    return _masked_ce(label_logits, labels)


def mcr(tag_logits: torch.Tensor, tag_labels: torch.Tensor) -> torch.Tensor:
    """Masked concept recovering: predict the masked tags from the visual encoder.

    tag_logits: [B, T, V] scores over the vocabulary at each tag position.
    tag_labels: [B, T] original id at masked positions, -100 elsewhere (masking.mask_tags).
    Returns the mean CE over masked positions; 0 with a grad path when nothing is masked.
    The text-side concept recovery uses the same function on concept positions.
    """
    return _masked_ce(tag_logits, tag_labels)


def mlm(token_logits: torch.Tensor, token_labels: torch.Tensor,
        positive: torch.Tensor | None = None) -> torch.Tensor:
    """Masked language modelling from the fused (cross-modal) output, on matched pairs only.

    token_logits: [N, L, V]; token_labels: [N, L] (-100 where not masked, masking.mask_tokens).
    positive: [N] bool, True where row n is a matched text-image pair; the ITM batch also holds
    mismatched pairs, whose image cannot help recover the caption, so they are ignored.
    Returns the mean CE over masked tokens of positive rows (0 with a grad path if none).
    """
    if positive is not None:
        token_labels = token_labels.masked_fill(~positive[:, None], IGNORE)
    return _masked_ce(token_logits, token_labels)


def xmm(word_logits: torch.Tensor, word_labels: torch.Tensor, region_predicted: torch.Tensor,
        region_target: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-modality reconstruction (SIMLA): masked words recovered with the whole
    image (CE, as mlm) and masked regions recovered with the whole caption (squared error of
    their fused states against the regions' own input embeddings, taken without gradient); the
    mean of the two.

    word_logits: [N, V] at the masked words, word_labels: [N]; region_predicted, region_target:
    [M, hidden] at the masked regions.
    """
    return (mlm(word_logits, word_labels) + mamo(region_predicted, region_target)) / 2


NEGATIVE_MODES = ("hard", "sampled", "random")


def itm_negatives(sim: torch.Tensor, generator: torch.Generator | None = None,
                  image_ids: torch.Tensor | None = None, mode: str = "hard",
                  text_ids: torch.Tensor | None = None, matches: torch.Tensor | None = None):
    """The ITM batch from `sim` [B, B] (the VSC matrix, read without gradient): (text_index,
    image_index, label), the positives (i, i, 1) first, then the negatives. Pairs of one image
    (`image_ids`: COCO has 5 captions each), of identical caption text (`text_ids`: templated
    captions repeat, and such a pair matches as far as anyone can tell) or known to match
    (`matches` [B, B] bool: the labelled regions prove the text true of the image) are never
    negatives; the last two are ignored if they would leave a row or column without a
    partner. mode "hard" (MVP's authors): B negatives, the first B // 2 rows of a permutation as
    texts with their most similar image, the rest as images with their most similar text;
    "random": the same split, partners uniform; "sampled" (ALBEF): 2B, a partner for every text
    and every image by softmax(sim)."""
    if mode not in NEGATIVE_MODES:
        raise ValueError(f"negative mode must be one of {NEGATIVE_MODES}, got {mode!r}")
    b = sim.shape[0]
    device = sim.device
    gen_device = generator.device if generator is not None else device
    excluded = torch.eye(b, dtype=torch.bool, device=device)
    if image_ids is not None:
        excluded = excluded | (image_ids[:, None] == image_ids[None, :])
    if excluded.all(1).any():
        raise ValueError("itm_negatives: some pair has no non-matching partner in the batch")
    known = excluded
    if text_ids is not None:
        known = known | (text_ids[:, None] == text_ids[None, :])
    if matches is not None:
        known = known | matches.to(device)
    if not (known.all(1).any() or known.all(0).any()):
        excluded = known
    arange = torch.arange(b, device=device)

    def draw(weights: torch.Tensor, banned: torch.Tensor) -> torch.Tensor:
        """One column per row that `banned` allows, with probability proportional to `weights`
        (>= 0)."""
        weights = weights.masked_fill(banned, 0.0)
        return torch.multinomial(weights.to(gen_device), 1, generator=generator).to(device)[:, 0]

    # draw order: the permutation (hard, random), then the partners (sampled, random)
    with torch.no_grad():
        scores = sim.detach().float()
        if mode == "sampled":
            # softmax over the allowed partners; the max-shift keeps exp finite at any scale
            image_of_text = draw((scores - scores.max(1, keepdim=True).values).exp(), excluded)
            text_of_image = draw((scores.t() - scores.t().max(1, keepdim=True).values).exp(),
                                 excluded.t())
            text_index = torch.cat([arange, arange, text_of_image])
            image_index = torch.cat([arange, image_of_text, arange])
        else:
            if generator is None:
                order = arange
            else:
                order = torch.randperm(b, generator=generator, device=gen_device).to(device)
            if mode == "hard":
                image_of_text = scores.masked_fill(excluded, float("-inf")).argmax(1)
                text_of_image = scores.t().masked_fill(excluded.t(), float("-inf")).argmax(1)
            else:   # rows of the second draw are images: the mask transposed (known matches
                #     are one-way: a text true of another image, not that image's text of it)
                image_of_text, text_of_image = (draw(torch.ones(b, b, device=device), banned)
                                                for banned in (excluded, excluded.t()))
            text_rows, image_cols = order[: b // 2], order[b // 2:]
            text_index = torch.cat([arange, text_rows, text_of_image[image_cols]])
            image_index = torch.cat([arange, image_of_text[text_rows], image_cols])
    label = torch.cat([torch.ones(b, dtype=torch.long, device=device),
                       torch.zeros(len(text_index) - b, dtype=torch.long, device=device)])
    return text_index, image_index, label


def itm(itm_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Image-text matching: 2-way CE on the pooled fused [CLS].

    itm_logits: [N, 2] (column 1 = "matched"); labels: [N] long in {0, 1} (itm_negatives).
    """
    return F.cross_entropy(itm_logits, labels)


@dataclass
class WPGOutput:
    """Result of `wpg`. B = number of texts (= images) in the batch."""
    loss: torch.Tensor            # scalar
    positive_score: torch.Tensor  # [B] score(T_b, I_b)
    negative_score: torch.Tensor  # [B] score(T_b, I_neg[b])
    negative_image: torch.Tensor  # [B] long, index of the negative image of each text
    counted: torch.Tensor         # [B] bool, texts that enter the mean


def _grounding_score(phrases, phrase_mask, regions, region_mask, generator, top_k):
    """score(T_n, I_n) for aligned rows: mean over T_n's phrases of cos(phrase, region), the region
    drawn uniformly among the top-k valid regions of I_n by cosine (fewer when I_n has fewer).

    phrases [N, P, D], phrase_mask [N, P], regions [N, R, D], region_mask [N, R] -> [N].
    Rows with no phrase or no region score 0 (callers leave them out).
    """
    cos = torch.einsum("npd,nrd->npr", F.normalize(phrases, dim=-1), F.normalize(regions, dim=-1))
    cos = cos.masked_fill(~region_mask[:, None, :], float("-inf"))  # padding never in the top-k
    k = min(top_k, cos.shape[-1])
    top = cos.topk(k, dim=-1).values                                  # [N, P, k], best first
    n_candidates = region_mask.sum(-1).clamp(max=k).clamp(min=1)      # [N]
    u = torch.rand(top.shape[:2], generator=generator,
                   device=generator.device if generator is not None else top.device).to(top.device)
    pick = (u * n_candidates[:, None]).long()                        # [N, P] in [0, n_candidates)
    chosen = top.gather(-1, pick[..., None]).squeeze(-1)              # [N, P]
    keep = phrase_mask & region_mask.any(-1, keepdim=True)
    chosen = torch.where(keep, chosen, torch.zeros_like(chosen))     # also clears -inf rows
    return chosen.sum(-1) / phrase_mask.sum(-1).clamp(min=1)


def wpg(phrase_vecs: torch.Tensor, phrase_mask: torch.Tensor, region_vecs: torch.Tensor,
        region_mask: torch.Tensor, generator: torch.Generator | None = None,
        margin: float = 0.2, top_k: int = 3) -> WPGOutput:
    """Weakly-supervised phrase grounding (METHOD.md §3): score(T, I) = mean over T's phrases of
    cos(phrase, best region of I), "best" drawn among I's top-`top_k` (so the loss does not lock
    onto one region early); loss = mean of max(0, margin + score(T, I_neg) - score(T, I)), I_neg
    uniform among the other images. phrase_vecs [B, P, D], region_vecs [B, R, D] with their masks:
    the fused concept and region positions; I_neg's regions are those of its own positive pass
    (no second fused pass). Texts without phrases, or whose image or I_neg has no region, are
    left out; none left (or B < 2): 0 with a grad path."""
    b = phrase_vecs.shape[0]
    device = phrase_vecs.device
    zero = phrase_vecs.sum() * 0.0 + region_vecs.sum() * 0.0
    if b < 2:
        empty = torch.zeros(b, device=device)
        return WPGOutput(zero, empty, empty, torch.zeros(b, dtype=torch.long, device=device),
                         torch.zeros(b, dtype=torch.bool, device=device))
    gen_device = generator.device if generator is not None else device
    # draw order: the shift [B], then the top-k picks of the positives [B, P], then the negatives
    shift = torch.randint(1, b, (b,), generator=generator, device=gen_device).to(device)
    negative = (torch.arange(b, device=device) + shift) % b
    pos = _grounding_score(phrase_vecs, phrase_mask, region_vecs, region_mask, generator, top_k)
    neg = _grounding_score(phrase_vecs, phrase_mask, region_vecs[negative], region_mask[negative],
                           generator, top_k)
    has_region = region_mask.any(-1)
    counted = phrase_mask.any(-1) & has_region & has_region[negative]
    hinge = (margin + neg - pos).clamp(min=0)
    loss = hinge[counted].mean() if counted.any() else zero
    return WPGOutput(loss, pos, neg, negative, counted)
