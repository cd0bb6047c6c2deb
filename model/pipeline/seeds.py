"""Several seeds of one comparison: the mean and sample standard deviation of every metric over
the seeds, and which variants differ from a reference by more than the seed spread."""
from __future__ import annotations

import statistics


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value: one seed shows no spread)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def aggregate(per_seed: dict[int, dict]) -> dict:
    """One variant's results over its seeds (run_variant results by seed): "retrieval" and
    "vqa" hold the means, "retrieval_sd" and "vqa_sd" the standard deviations, "seeds" the
    runs. Metrics are those every seed has."""
    runs = list(per_seed.values())
    numeric = [k for k, v in runs[0]["retrieval"].items() if isinstance(v, (int, float))
               and all(k in r["retrieval"] for r in runs)]
    retrieval = {k: mean_sd([float(r["retrieval"][k]) for r in runs]) for k in numeric}
    vqa = {d: mean_sd([float(r["vqa"][d]["vqa_acc"]) for r in runs]) for d in runs[0]["vqa"]}
    return {"variant": runs[0]["variant"], "pretraining": runs[0]["pretraining"],
            "seeds": per_seed, "retrieval": {k: m for k, (m, _) in retrieval.items()},
            "retrieval_sd": {k: s for k, (_, s) in retrieval.items()},
            "vqa": {d: {"vqa_acc": m} for d, (m, _) in vqa.items()},
            "vqa_sd": {d: s for d, (_, s) in vqa.items()}}


def beyond_spread(variants: dict[str, dict], reference: str, metrics: list[str]) -> list[str]:
    """Sentences naming each (variant, retrieval metric) whose mean differs from the reference
    variant's by more than the two standard deviations added: a difference the seeds do not
    explain. Empty when nothing does (or with a single seed, where there is no spread)."""
    ref = variants[reference]
    out = []
    for name, r in variants.items():
        if name == reference or "retrieval_sd" not in r:
            continue
        for key in metrics:
            gap = r["retrieval"][key] - ref["retrieval"][key]
            sds = (r["retrieval_sd"][key], ref["retrieval_sd"][key])
            if None in sds:
                continue
            spread = sum(sds)
            if spread > 0 and abs(gap) > spread:
                out.append(f"{name} {key} {100 * gap:+.1f} points against {reference} "
                           f"(seed spread {100 * spread:.1f})")
    return out
