"""Image-text retrieval metrics and ITM re-ranking (METHOD.md §4), as pure functions of score
matrices: rows are captions, columns are gallery images (each image once)."""
from __future__ import annotations

from typing import Callable

import torch

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


def recall_at_k_chunked(text_g: torch.Tensor, image_g: torch.Tensor, text_image: torch.Tensor,
                        ks=KS, chunk: int = 1024) -> dict[str, float]:
    """recall_at_k of sim = text_g @ image_g.T, computed `chunk` captions at a time: memory
    O(chunk x n_image), never the dense [n_text, n_image] matrix (all of COCO's is 300 GB).
    Same ranks and tie rule as recall_at_k."""
    n_text, n_image = len(text_g), len(image_g)
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
    for rows, sim, own, local in chunks():
        gold = sim[local, own]
        best_gold.scatter_reduce_(0, own, gold, "amax")
        t2i_rank[rows] = (sim >= gold[:, None] - TIE).sum(1) - 1
    # pass 2 (the same products again, not kept between passes): captions of other images
    i2t_rank = torch.zeros(n_image, dtype=torch.long, device=text_g.device)
    for _, sim, own, local in chunks():
        beats = sim >= best_gold[None, :] - TIE
        beats[local, own] = False                          # an image's own captions never count
        i2t_rank += beats.sum(0)
    i2t_rank = i2t_rank[torch.isfinite(best_gold)]       # images with a caption
    out = {f"{d}_r{k}": (rank < k).float().mean().item()
           for d, rank in (("t2i", t2i_rank), ("i2t", i2t_rank)) for k in ks}
    out["rsum"] = sum(out.values())
    return out


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
