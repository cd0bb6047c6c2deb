"""Retrieval evaluation through a vector index (model/downstream/retrieval.py ann_ranks): the
inverted file (faiss IVF, the path above evaluate's ANN_ABOVE images) against an exact index
over the same vectors, side by side on synthetic clustered 256-d embeddings (images around
n/100 centres, one caption per image near its image, cosine ~0.5), each in a fresh process:
R@k both ways, seconds and peak RSS. The exact index is run only up to --exact-up-to images
(its cost grows as n^2).

    python benchmarks/ann_retrieval.py --sizes 50000 150000 1000000 --exact-up-to 150000
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.append(str(Path(__file__).resolve().parent))  # after the project: benchmarks/*.py

from measure import peak_rss_mib, save_json  # noqa: E402

from model.downstream import retrieval  # noqa: E402


def embeddings(n: int, dim: int = 256, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(max(1, n // 100), dim, generator=g)
    near = centres[torch.randint(0, len(centres), (n,), generator=g)]
    images = torch.nn.functional.normalize(near + 0.8 * torch.randn(n, dim, generator=g), dim=-1)
    text = torch.nn.functional.normalize(
        images + 1.6 / dim ** 0.5 * torch.randn(n, dim, generator=g), dim=-1)
    return text, images, torch.arange(n)


def measure(path: str, n: int) -> dict:
    text, images, text_image = embeddings(n)
    start = time.perf_counter()
    # the same ann_ranks, its index exact or an inverted file
    ranks = retrieval.ann_ranks(text, images, text_image,
                                exact_up_to=n if path == "exact" else 0)
    seconds = time.perf_counter() - start
    return {"path": path, "images": n, "seconds": round(seconds, 1),
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "recall": {k: round(v, 4) for k, v in ranks.recalls().items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[50_000, 150_000, 1_000_000])
    p.add_argument("--exact-up-to", type=int, default=150_000)
    p.add_argument("--measure", choices=["exact", "ivf"])
    p.add_argument("--images", type=int)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.images)))
        return
    rows = []
    for n in args.sizes:
        for path in ("ivf", "exact") if n <= args.exact_up_to else ("ivf",):
            out = subprocess.run([sys.executable, __file__, "--measure", path, "--images", str(n)],
                                 capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{n:>8} {path:>6}: {r['seconds']:>7} s, peak RSS {r['peak_rss_mib']:>7} MiB, "
                  + ", ".join(f"{k} {v}" for k, v in r["recall"].items()), flush=True)
        same = [r for r in rows if r["images"] == n]
        if len(same) == 2:
            ivf, exact = same
            worst = max(exact["recall"][k] - ivf["recall"][k] for k in exact["recall"]
                        if k != "rsum")
            print(f"  ivf / exact: x{exact['seconds'] / ivf['seconds']:.2f} faster, R@k at most "
                  f"{worst:.4f} lower")
    save_json(args.out, rows)


if __name__ == "__main__":
    main()
