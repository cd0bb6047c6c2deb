"""How much do region vectors say about their object? Linear-probe accuracy for colour, shape and
size on the `shapes` generator's scenes, per backbone, side by side:

  - ViT-B-32, random init (OpenCLIP; the CPU demo's features: no CLIP weights offline)
  - EfficientNet-Lite0, random init (a control: the conv architecture without pretraining)
  - EfficientNet-Lite0, ImageNet (the packaged weights, `mvp features --backbone
    efficientnet-lite0`)
  - with --bootstrap WEIGHTS: the CLIP `mvp clip-bootstrap` trained on a warehouse's own pairs
    (mvp-clip-small), the tower for when no pretrained weights can be had

Region vectors go through the extraction path (preprocess, box -> input pixels, one forward per
image, RoIAlign, projection: features/extract.py's encode_regions), one box per object. The
labels are the regions table's: label = shape, attributes = [size, colour]
(warehouse/ingest/readers/shapes.py). A multinomial logistic regression on standardised vectors
is fit on the regions of the first 75% of scenes and scored on the rest (no scene on both sides);
its L2 strength is chosen on the last fifth of the training scenes. Baselines: chance (1/classes)
and the majority class of the training regions. Size is probed from the vector alone, although
the model also gets each box's geometry.

    python benchmarks/region_probe.py [--scenes 400] [--seed 0] [--bootstrap WEIGHTS]
                                      [--json FILE]
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from features.backbone import load_backbone  # noqa: E402
from features.extract import encode_regions  # noqa: E402
from features.geometry import to_input_pixels  # noqa: E402
from warehouse.ingest.readers import shapes  # noqa: E402

BACKBONES = [  # (column, backbone name, pretrained)
    ("ViT-B-32 random", "ViT-B-32", None),
    ("EffNet-L0 random", "efficientnet-lite0", "none"),
    ("EffNet-L0 ImageNet", "efficientnet-lite0", "imagenet"),
]
ATTRIBUTES = {"colour": tuple(shapes.COLOURS), "shape": shapes.SHAPES, "size": tuple(shapes.SIZES)}
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
TRAIN_FRACTION = 0.75


def make_scenes(n: int, seed: int) -> tuple[list[Image.Image], list[np.ndarray], dict, np.ndarray]:
    """(images, boxes per image, labels {attribute: class index per region}, scene per region),
    rendered and decoded as ingest stores them."""
    images, boxes, scene_of = [], [], []
    labels = {a: [] for a in ATTRIBUTES}
    for i in range(n):
        s = shapes.scene(seed, i)
        images.append(Image.open(io.BytesIO(shapes.render(s["objects"], s["background"])))
                      .convert("RGB"))
        boxes.append(np.array([o["box"] for o in s["objects"]], np.float32))
        for o in s["objects"]:
            for attribute, classes in ATTRIBUTES.items():
                labels[attribute].append(classes.index(o[attribute]))
            scene_of.append(i)
    return images, boxes, {a: np.array(v) for a, v in labels.items()}, np.array(scene_of)


def region_vectors(backbone, images: list[Image.Image], boxes: list[np.ndarray],
                   batch: int = 32) -> torch.Tensor:
    """[n regions, dim] float32, in the order of the boxes."""
    out = []
    for start in range(0, len(images), batch):
        chunk = range(start, min(start + batch, len(images)))
        pixels = torch.stack([backbone.preprocess(images[i]) for i in chunk])
        rois = [torch.from_numpy(to_input_pixels(boxes[i], *images[i].size, backbone.image_size))
                for i in chunk]
        out.append(encode_regions(backbone, pixels, rois)[0])
    return torch.cat(out)


def fit_predict(x: torch.Tensor, y: torch.Tensor, x_eval: torch.Tensor, n_classes: int,
                l2: float) -> torch.Tensor:
    """Softmax regression with an L2 penalty, fit to convergence by L-BFGS (a convex problem:
    the result does not depend on initialisation or batch order)."""
    w = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, tolerance_grad=1e-7,
                            line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        value = F.cross_entropy(x @ w + b, y) + l2 * w.pow(2).sum()
        value.backward()
        return value

    opt.step(loss)
    with torch.no_grad():
        return (x_eval @ w + b).argmax(1)


def probe(vectors: torch.Tensor, labels: np.ndarray, n_classes: int, train: np.ndarray,
          val: np.ndarray) -> float:
    """Held-out accuracy; `train` / `val` mark the regions of training / L2-selection scenes
    (val is a subset of train), everything else is the test set."""
    test = ~train
    x = vectors.double()
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6  # training statistics only
    x = (x - mean) / std
    y = torch.from_numpy(labels)
    fit = train & ~val

    def accuracy(l2, fit_mask, eval_mask):
        pred = fit_predict(x[fit_mask], y[fit_mask], x[eval_mask], n_classes, l2)
        return (pred == y[eval_mask]).double().mean().item()

    # the largest L2 among the best on validation: the simplest probe that does as well
    best = max(L2_GRID, key=lambda l2: (round(accuracy(l2, fit, val), 4), l2))
    return accuracy(best, train, test)


def mean_pairwise_cosine(vectors: torch.Tensor) -> float:
    """Mean cosine between the vectors of different regions (1.0: all alike)."""
    v = F.normalize(vectors.double(), dim=1)
    n = len(v)
    return ((v.sum(0).pow(2).sum() - n) / (n * (n - 1))).item()  # off-diagonal mean of v v^T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap", help="also probe these mvp-clip-small weights "
                                        "(`mvp clip-bootstrap`)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    backbones = BACKBONES + ([("bootstrap CLIP", "mvp-clip-small", args.bootstrap)]
                             if args.bootstrap else [])

    images, boxes, labels, scene_of = make_scenes(args.scenes, args.seed)
    n_train = int(args.scenes * TRAIN_FRACTION)
    train = scene_of < n_train
    val = train & (scene_of >= int(n_train * 0.8))
    print(f"{args.scenes} scenes (seed {args.seed}), {len(scene_of)} regions: "
          f"{train.sum()} train ({(train & ~val).sum()} fit + {val.sum()} L2 selection), "
          f"{(~train).sum()} test; torch threads {torch.get_num_threads()}")

    results = {"scenes": args.scenes, "seed": args.seed, "regions": int(len(scene_of)),
               "test_regions": int((~train).sum()), "baselines": {}, "backbones": {}}
    for attribute, classes in ATTRIBUTES.items():
        majority = np.bincount(labels[attribute][train], minlength=len(classes)).argmax()
        results["baselines"][attribute] = {
            "chance": 1 / len(classes),
            "majority": float((labels[attribute][~train] == majority).mean())}
    for column, name, pretrained in backbones:
        started = time.perf_counter()
        bb = load_backbone(name, pretrained, device="cpu")
        vectors = region_vectors(bb, images, boxes)
        seconds = time.perf_counter() - started
        row = {attribute: probe(vectors, labels[attribute], len(classes), train, val)
               for attribute, classes in ATTRIBUTES.items()}
        row.update(dim=bb.dim, stride=bb.stride, mean_cosine=mean_pairwise_cosine(vectors),
                   seconds=round(seconds, 1), weights_sha256=bb.weights_sha256)
        results["backbones"][column] = row
        print(f"  {column}: {bb.dim}-d, stride {bb.stride}, load + encode {seconds:.1f} s",
              flush=True)

    base, best = BACKBONES[0][0], BACKBONES[-1][0]
    columns = ["chance", "majority"] + [c for c, _, _ in backbones] + ["ratio"]
    width = max(len(c) for c in columns) + 2
    print(f"\nheld-out linear-probe accuracy; ratio = {best} / {base}\n")
    print(f"{'':<12}" + "".join(f"{c:>{width}}" for c in columns))
    for attribute, classes in ATTRIBUTES.items():
        cells = [results["baselines"][attribute]["chance"],
                 results["baselines"][attribute]["majority"]]
        cells += [results["backbones"][c][attribute] for c, _, _ in backbones]
        ratio = results["backbones"][best][attribute] / results["backbones"][base][attribute]
        print(f"{f'{attribute} ({len(classes)})':<12}" + "".join(f"{v:>{width}.1%}"
                                                               for v in cells)
              + f"{f'{ratio:.2f}x':>{width}}")
    print(f"{'mean cosine':<12}" + " " * 2 * width
          + "".join(f"{results['backbones'][c]['mean_cosine']:>{width}.2f}"
                    for c, _, _ in backbones))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
