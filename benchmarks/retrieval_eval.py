"""Retrieval evaluation at gallery sizes beyond a dense similarity matrix: the chunked recall
(model/downstream/retrieval.py recall_at_k_chunked) against the dense recall_at_k on the same
synthetic 256-d embeddings (captions near their image's vector, 5 per image), each in a fresh
process: R@k equal, seconds and peak RSS. The dense path is run only where its matrix fits.

    python benchmarks/retrieval_eval.py --sizes 25000:5000 100000:20000 --dense-up-to 25000
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
sys.path.append(str(Path(__file__).resolve().parent))  # after the project: benchmarks/features.py

from measure import peak_rss_mib, save_json  # noqa: E402

from model.downstream.retrieval import recall_at_k, recall_at_k_chunked  # noqa: E402


def embeddings(n_text: int, n_image: int, dim: int = 256, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.normalize(torch.randn(n_image, dim, generator=g), dim=-1)
    text_image = torch.arange(n_text) % n_image
    # noise of norm ~6 against the image's unit vector: R@1 well inside (0, 1)
    noise = 6.0 * torch.randn(n_text, dim, generator=g) / dim ** 0.5
    text = torch.nn.functional.normalize(images[text_image] + noise, dim=-1)
    return text, images, text_image


def measure(path: str, n_text: int, n_image: int) -> dict:
    text, images, text_image = embeddings(n_text, n_image)
    start = time.perf_counter()
    if path == "dense":
        recall = recall_at_k(text @ images.t(), text_image)
    else:
        recall = recall_at_k_chunked(text, images, text_image)
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    return {"path": path, "captions": n_text, "images": n_image, "seconds": round(seconds, 2),
            "peak_rss_mib": round(peak, 1), "recall": recall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["25000:5000", "100000:20000"],
                   help="captions:images")
    p.add_argument("--dense-up-to", type=int, default=25000, help="most captions run dense")
    p.add_argument("--measure", choices=["dense", "chunked"])
    p.add_argument("--captions", type=int)
    p.add_argument("--images", type=int)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.captions, args.images)))
        return
    rows = []
    for size in args.sizes:
        n_text, n_image = map(int, size.split(":"))
        for path in ("chunked", "dense") if n_text <= args.dense_up_to else ("chunked",):
            out = subprocess.run([sys.executable, __file__, "--measure", path, "--captions",
                                  str(n_text), "--images", str(n_image)], capture_output=True,
                                 text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{n_text:>8} x {n_image:<7} {path:>8}: {r['seconds']:>7} s, peak RSS "
                  f"{r['peak_rss_mib']:>8} MiB, t2i R@1 {r['recall']['t2i_r1']:.4f}, i2t R@1 "
                  f"{r['recall']['i2t_r1']:.4f}", flush=True)
        same = [r for r in rows if r["captions"] == n_text]
        if len(same) == 2:
            print(f"  chunked == dense: {same[0]['recall'] == same[1]['recall']}; peak RSS "
                  f"chunked/dense {same[0]['peak_rss_mib'] / same[1]['peak_rss_mib']:.2f}")
    save_json(args.out, rows)


if __name__ == "__main__":
    main()
