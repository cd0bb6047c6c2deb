"""Image-text retrieval metrics and ITM re-ranking (METHOD.md §4), as pure functions of score
matrices: rows are captions, columns are gallery images (each image once)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from warehouse.vector_index import EXACT_UP_TO, NPROBE, VectorIndex

KS = (1, 5, 10)
# Scores this close count as tied: identical captions (templated data repeats them) score the
# same image equally in exact arithmetic, but a matmul's last bits change with its blocking and
# thread count, and a tie must not flip with them.
TIE = 1e-5
K_TEXT, K_IMAGE = 128, 64   # the paper's re-ranking depth: captions per image, images per caption


def recall_at_k(sim: torch.Tensor, text_image: torch.Tensor, ks=KS,
                i2t_sim: torch.Tensor | None = None) -> dict[str, float]:
    """sim [n_text, n_image] scores, text_image [n_text] gold image column of each caption.
    `i2t_sim` (default `sim`) is what the image -> text direction ranks by. A caption hits at k
    when its gold image is in its top k; an image when ANY of its captions is (images without a
    caption are left out). Returns t2i_r{k} and i2t_r{k} for each k in `ks` (fractions in
    [0, 1]) and rsum, their sum."""
    sim = sim.float()
    i2t_sim = sim if i2t_sim is None else i2t_sim.float()
    n_text, n_image = sim.shape
    text_image = torch.as_tensor(text_image, dtype=torch.long, device=sim.device)
    if text_image.shape != (n_text,):
        raise ValueError(f"text_image has shape {tuple(text_image.shape)}, expected ({n_text},)")
    if i2t_sim.shape != sim.shape:
        raise ValueError(f"i2t_sim {tuple(i2t_sim.shape)} != sim {tuple(sim.shape)}")
    rows = torch.arange(n_text, device=sim.device)
    # ties count against the gold item (rank = OTHER candidates scoring >= it): equal scores earn
    # nothing, whatever order a sort would give them

    # t2i: images other than the gold one scoring >= the gold score
    gold = sim[rows, text_image]
    t2i_rank = (sim >= gold[:, None] - TIE).sum(1) - 1

    # i2t: the image's best-scoring caption against every caption of another image
    is_gold = torch.zeros(n_text, n_image, dtype=torch.bool, device=sim.device)
    is_gold[rows, text_image] = True
    best_gold = i2t_sim.masked_fill(~is_gold, float("-inf")).max(0).values      # [n_image]
    i2t_rank = ((i2t_sim >= best_gold[None, :] - TIE) & ~is_gold).sum(0)
    i2t_rank = i2t_rank[is_gold.any(0)]

    out = {}
    for direction, rank in (("t2i", t2i_rank), ("i2t", i2t_rank)):
        for k in ks:
            out[f"{direction}_r{k}"] = (rank < k).float().mean().item()
    out["rsum"] = sum(out.values())
    return out


@dataclass
class DualRanks:
    """The dual encoder's ranks and (when asked) top candidates, from `dual_ranks`."""
    t2i: torch.Tensor            # [n_text] other images scoring >= each caption's gold image
    i2t: torch.Tensor            # [n_image] other images' captions scoring >= its best caption
    has_caption: torch.Tensor    # [n_image] bool: images i2t ranks (those with a caption)
    t2i_top: torch.Tensor        # [n_text, k_image] each caption's best images, best first
    i2t_top: torch.Tensor        # [k_text, n_image] each image's best captions, best first

    def recalls(self, ks=KS, t2i: torch.Tensor | None = None,
                i2t: torch.Tensor | None = None) -> dict[str, float]:
        """R@k both ways from these ranks, or from `t2i` / `i2t` ranks given instead."""
        t2i = self.t2i if t2i is None else t2i
        i2t = (self.i2t if i2t is None else i2t)[self.has_caption]
        out = {f"{d}_r{k}": (rank < k).float().mean().item()
               for d, rank in (("t2i", t2i), ("i2t", i2t)) for k in ks}
        out["rsum"] = sum(out.values())
        return out


def dual_ranks(text_g: torch.Tensor, image_g: torch.Tensor, text_image: torch.Tensor,
               chunk: int = 1024, k_text: int = 0, k_image: int = 0) -> DualRanks:
    """The ranks recall_at_k gives sim = text_g @ image_g.T (same tie rule), computed `chunk`
    captions at a time: memory O(chunk x n_image + (k_text + k_image) x n), never the dense
    [n_text, n_image] matrix (all of COCO's is 300 GB). Also each caption's top `k_image` images
    and each image's top `k_text` captions, the candidates ITM re-ranks."""
    n_text, n_image = len(text_g), len(image_g)
    k_text, k_image = min(k_text, n_text), min(k_image, n_image)
    text_image = torch.as_tensor(text_image, dtype=torch.long, device=text_g.device)
    images = image_g.float().t()

    def chunks():
        for start in range(0, n_text, chunk):
            rows = slice(start, min(start + chunk, n_text))
            sim = text_g[rows].float() @ images                          # [c, n_image]
            own = text_image[rows]
            yield rows, sim, own, torch.arange(len(own), device=sim.device)

    # pass 1: each image's best gold score, which i2t ranks the other captions against
    best_gold = torch.full((n_image,), float("-inf"), device=text_g.device)
    t2i_rank = torch.empty(n_text, dtype=torch.long, device=text_g.device)
    t2i_top = torch.empty(n_text, k_image, dtype=torch.long, device=text_g.device)
    top_sim = torch.empty(0, n_image, device=text_g.device)     # running best captions per image
    i2t_top = torch.empty(0, n_image, dtype=torch.long, device=text_g.device)
    for rows, sim, own, local in chunks():
        gold = sim[local, own]
        best_gold.scatter_reduce_(0, own, gold, "amax")
        t2i_rank[rows] = (sim >= gold[:, None] - TIE).sum(1) - 1
        t2i_top[rows] = sim.topk(k_image, dim=1).indices
        if k_text:
            caption = torch.arange(rows.start, rows.stop, device=sim.device)[:, None]
            merged = torch.cat([top_sim, sim])
            best = merged.topk(min(k_text, len(merged)), dim=0)
            top_sim = best.values
            i2t_top = torch.cat([i2t_top, caption.expand_as(sim)]).gather(0, best.indices)
    # pass 2 (the same products again, not kept between passes): captions of other images
    i2t_rank = torch.zeros(n_image, dtype=torch.long, device=text_g.device)
    for _, sim, own, local in chunks():
        beats = sim >= best_gold[None, :] - TIE
        beats[local, own] = False                          # an image's own captions never count
        i2t_rank += beats.sum(0)
    return DualRanks(t2i_rank, i2t_rank, torch.isfinite(best_gold), t2i_top, i2t_top)


def _rank_among(scores: torch.Tensor, is_gold: torch.Tensor, dim: int,
                otherwise: torch.Tensor | int) -> torch.Tensor:
    """Along `dim` of a candidate list: how many non-gold candidates score >= the best gold one
    (the tie rule of recall_at_k), or `otherwise` where no candidate is gold."""
    best = scores.masked_fill(~is_gold, float("-inf")).max(dim, keepdim=True).values
    return torch.where(is_gold.any(dim), ((scores >= best - TIE) & ~is_gold).sum(dim), otherwise)


def ann_ranks(text_g: torch.Tensor, image_g: torch.Tensor, text_image: torch.Tensor,
              k_text: int = 0, k_image: int = 0, ks=KS, nprobe: int = NPROBE,
              exact_up_to: int = EXACT_UP_TO) -> DualRanks:
    """dual_ranks for galleries too large to scan per caption: each caption's top images and
    each image's top captions come from a VectorIndex (an inverted file above EXACT_UP_TO rows),
    depth = max(k_image or k_text, max(ks)) deep. A gold item within that depth ranks among what
    the index returned (same tie rule); one outside it, or one the index missed, gets rank
    `depth`: a miss at every k. Candidates the index could not fill are -1. Cost O(n x depth x
    the cells a query scans), not O(n_text x n_image). The index ranks by cosine: the dual
    encoder's score for its unit g vectors. `nprobe`, `exact_up_to`: VectorIndex.build's."""
    text_image = torch.as_tensor(text_image, dtype=torch.long)
    n_text, n_image = len(text_g), len(image_g)
    text, images = text_g.float().cpu().numpy(), image_g.float().cpu().numpy()

    def nearest(rows: np.ndarray, queries: np.ndarray, k: int):
        depth = min(max(k, max(ks)), len(rows))
        index = VectorIndex.build(rows, exact_up_to=exact_up_to, nprobe=nprobe)
        sim, found = index.search(queries, depth)
        return torch.from_numpy(sim), torch.from_numpy(found), depth

    # t2i: a caption's images; its gold one among them or not
    sim, found, depth = nearest(images, text, k_image)
    t2i = _rank_among(sim, found == text_image[:, None], 1, depth)
    t2i_top = found[:, :min(k_image, n_image)]
    # i2t: an image's captions; the best of its own among them, if any
    sim, found, depth = nearest(text, images, k_text)
    is_gold = (found >= 0) & (text_image[found.clamp(min=0)] == torch.arange(n_image)[:, None])
    i2t = _rank_among(sim, is_gold, 1, depth)
    i2t_top = found[:, :min(k_text, n_text)].t().contiguous()
    has_caption = torch.bincount(text_image, minlength=n_image) > 0
    return DualRanks(t2i, i2t, has_caption, t2i_top, i2t_top)


def recall_at_k_chunked(text_g: torch.Tensor, image_g: torch.Tensor, text_image: torch.Tensor,
                        ks=KS, chunk: int = 1024) -> dict[str, float]:
    """recall_at_k of sim = text_g @ image_g.T without holding it (see dual_ranks)."""
    return dual_ranks(text_g, image_g, text_image, chunk).recalls(ks)


def rerank_recall(ranks: DualRanks, text_image: torch.Tensor,
                  score_pairs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                  ks=KS) -> dict[str, float]:
    """R@k after ITM re-ranks the candidates in `ranks` (the paper's protocol), without an
    [n_text, n_image] matrix: equal to recall_at_k of `rerank`'s two matrices. A caption whose
    gold image is among its candidates ranks by ITM among them; otherwise every candidate stays
    ahead of it and its rank is the dual encoder's (each candidate scores >= it). Likewise per
    image over its candidate captions. score_pairs(text_rows [P], image_rows [P]) -> [P] match
    scores (higher = better), called once with every (caption, image) pair that is a candidate
    either way, each once."""
    text_image = torch.as_tensor(text_image, dtype=torch.long, device=ranks.t2i.device)
    n_text, n_image = len(ranks.t2i), len(ranks.i2t)
    t2i_text = torch.arange(n_text, device=text_image.device)[:, None].expand_as(ranks.t2i_top)
    i2t_image = torch.arange(n_image, device=text_image.device).expand_as(ranks.i2t_top)
    t2i_key = t2i_text * n_image + ranks.t2i_top               # a pair's key: text * n_image + image
    i2t_key = ranks.i2t_top * n_image + i2t_image
    t2i_real, i2t_real = ranks.t2i_top >= 0, ranks.i2t_top >= 0   # -1: a candidate not found
    keys = torch.cat([t2i_key[t2i_real], i2t_key[i2t_real]]).unique()     # sorted
    scores = torch.as_tensor(score_pairs(keys // n_image, keys % n_image)).float().reshape(-1)
    if scores.shape != keys.shape:
        raise ValueError(f"score_pairs gave {tuple(scores.shape)} scores for {len(keys)} pairs")
    # the last entry scores a candidate the index did not find: below every real one
    lookup = torch.cat([scores.to(keys.device), scores.new_full((1,), float("-inf"))])

    def itm(key: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return lookup[torch.where(real, torch.searchsorted(keys, key), len(keys))]

    # t2i: a caption's candidates, its gold image among them or not
    t2i = _rank_among(itm(t2i_key, t2i_real), ranks.t2i_top == text_image[:, None], 1, ranks.t2i)
    # i2t: an image's candidate captions, any of its own among them or not
    is_gold = i2t_real & (text_image[ranks.i2t_top.clamp(min=0)] == i2t_image)
    i2t = _rank_among(itm(i2t_key, i2t_real), is_gold, 0, ranks.i2t)
    return ranks.recalls(ks, t2i, i2t)


def chance_recall_at_1(text_image: torch.Tensor, n_image: int) -> dict[str, float]:
    """R@1 of a random ranking: 1/n_image for t2i; for i2t, an image with c of the n_text
    captions gets one of them on top with probability c / n_text (averaged over the images that
    have captions)."""
    counts = torch.bincount(torch.as_tensor(text_image), minlength=n_image).double()
    counts = counts[counts > 0]
    return {"t2i": 1.0 / n_image, "i2t": (counts / len(text_image)).mean().item()}


def rerank(sim: torch.Tensor, itm_score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
           k_text: int = K_TEXT, k_image: int = K_IMAGE, batch_size: int = 256
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-rank the dual encoder's top candidates by ITM (the paper's protocol). The directions
    rank different candidate sets, hence two [n_text, n_image] matrices (t2i, i2t): in row i of
    t2i, caption i's top `k_image` images hold their ITM score and every other image a score
    below all of those, in dual-encoder order; i2t likewise per column with each image's top
    `k_text` captions. itm_score_fn(text_rows [P], image_rows [P]) -> [P] match scores (higher =
    better) of the pairs, called with at most `batch_size` pairs at a time; each pair is scored
    once."""
    n_text, n_image = sim.shape
    sim = sim.float()
    cand_t2i = _top_mask(sim, min(k_image, n_image), dim=1)
    cand_i2t = _top_mask(sim, min(k_text, n_text), dim=0)
    pairs = (cand_t2i | cand_i2t).nonzero()                      # [P, 2] (text, image)
    scores = torch.cat([torch.as_tensor(itm_score_fn(p[:, 0], p[:, 1])).float().reshape(-1)
                        for p in pairs.split(batch_size)]) if len(pairs) else torch.zeros(0)
    itm = torch.full_like(sim, float("nan"))
    itm[pairs[:, 0], pairs[:, 1]] = scores.to(sim.device)
    return _put_ahead(sim, itm, cand_t2i), _put_ahead(sim, itm, cand_i2t)


def _top_mask(sim: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """True at the k highest entries along `dim`."""
    mask = torch.zeros_like(sim, dtype=torch.bool)
    if k > 0:
        mask.scatter_(dim, sim.topk(k, dim=dim).indices, True)
    return mask


def _put_ahead(sim: torch.Tensor, itm: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """ITM scores where `chosen`, elsewhere the dual-encoder scores shifted to lie 1 below the
    lowest chosen ITM score (so the order among the rest is kept)."""
    if not chosen.any():
        return sim.clone()
    floor = itm[chosen].min()
    rest = sim - sim.max() + floor - 1.0
    return torch.where(chosen, itm, rest)
