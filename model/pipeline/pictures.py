"""Pictures of a run for people to look at (loss curves, retrieval examples, phrases grounded on
regions), logged to MLflow by the flows; each has a fixed size in pixels so a report can lay them out."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")   # no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

from model.batch import assemble_text  # noqa: E402
from warehouse.catalog import connect  # noqa: E402

DPI = 100
PANEL = (4.0, 3.0)       # inches per loss panel: 400 x 300 px
THUMB = 1.6              # inches per retrieval cell: 160 px
GROUNDING = (6.0, 6.0)   # inches: 600 x 600 px


def loss_curves(client, run_ids: dict[str, str], keys: list[str], path) -> Path:
    """One panel per metric key, one line per run (label -> run id), per-step values. PNG of
    len(keys) * 400 x 300 px. Runs that never logged a key are left out of its panel."""
    fig, axes = plt.subplots(1, len(keys), figsize=(PANEL[0] * len(keys), PANEL[1]), dpi=DPI,
                             squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, run_id in run_ids.items():
            history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
            if history:
                ax.plot([m.step for m in history], [m.value for m in history], label=label)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return save_png(fig, path)


def retrieval_grid(captions: list[str], image_paths: list[str], sim: torch.Tensor,
                   gold: list[int], path, k: int = 5) -> Path:
    """Each caption in a row: its text, then the top-k gallery images by `sim` [n_caption,
    n_image]; the gold image framed in green (its rank is printed when it is not in the top k).
    PNG of (k + 2) * 160 x n_caption * 160 px (the caption takes two cells)."""
    n, k = len(captions), min(k, sim.shape[1])
    fig, axes = plt.subplots(n, k + 1, figsize=(THUMB * (k + 2), THUMB * n), dpi=DPI,
                             squeeze=False, gridspec_kw={"width_ratios": [2] + [1] * k})
    order = sim.argsort(dim=1, descending=True)
    for row, (caption, g) in enumerate(zip(captions, gold)):
        rank = int((order[row] == g).nonzero()[0, 0]) + 1
        text = caption if rank <= k else f"{caption}\n(gold image at rank {rank})"
        axes[row, 0].text(0, 0.5, wrap(text, 34), va="center", fontsize=8)
        axes[row, 0].axis("off")
        for col in range(k):
            ax, j = axes[row, col + 1], int(order[row, col])
            ax.imshow(Image.open(image_paths[j]).convert("RGB"))
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{col + 1}: {float(sim[row, j]):.3f}", fontsize=7)
            for side in ax.spines.values():
                side.set_color("green" if j == g else "lightgray")
                side.set_linewidth(4 if j == g else 1)
    return save_png(fig, path)


def retrieval_examples(model, data, warehouse, path, n: int = 4, k: int = 5) -> Path:
    """retrieval_grid for the first `n` captions of `data` (a held-out PretrainData) against
    its whole gallery (each image once, model/downstream/evaluate.py embed_split)."""
    from model.downstream.evaluate import embed_split
    model.eval()
    with torch.no_grad():
        emb = embed_split(model, data)
    with connect(warehouse) as con:
        ids = [str(c) for c in data.caption_ids[:n]]
        text = dict(con.execute("SELECT id, text FROM captions WHERE id IN "
                                f"({', '.join('?' * len(ids))})", ids).fetchall())
        paths = image_files(con, list(data.regions.image_ids))
    return retrieval_grid([text[c] for c in ids], paths, emb.similarity[:n].cpu(),
                          emb.text_image[:n].tolist(), path, k)


def best_regions(phrases: torch.Tensor, regions: torch.Tensor,
                 region_mask: torch.Tensor) -> torch.Tensor:
    """For each phrase [P, D] the region [R, D] of highest cosine among real ones (region_mask
    [R]): WPG's cosine (model/losses.py) with its top-1 in place of the random top-3 pick."""
    cos = F.normalize(phrases, dim=-1) @ F.normalize(regions, dim=-1).t()
    return cos.masked_fill(~region_mask[None, :], float("-inf")).argmax(-1)


@torch.no_grad()
def ground_caption(model, data, index: int) -> tuple[list[int], list[int]]:
    """(concept ids without offset, grounded region row of each) for caption `index` of `data`,
    from the cross encoder's states on the caption paired with its own image."""
    model.eval()
    batch = data.collate([data[index]])
    cfg = model.cfg
    ids, mask, start = assemble_text(batch.token_ids, batch.token_mask, batch.concept_ids,
                                     batch.concept_mask, cfg.sep_id, cfg.pad_id)
    fused = model.fuse(model.encode_text(ids, mask),
                       model.encode_visual(batch.visual))
    C = batch.concept_ids.shape[1]
    best = best_regions(fused.text_hidden[0, start:start + C], fused.region_hidden[0],
                        batch.visual.region_mask[0])
    concepts = (batch.concept_ids[0] - cfg.concept_offset).tolist()
    return concepts, best.tolist()


def grounding_picture(model, data, index: int, path, warehouse=None) -> Path:
    """The image of caption `index` with its regions; each region a caption phrase (concept)
    grounds in is outlined and labelled with the phrase (ground_caption). With no warehouse
    the boxes are drawn on a blank canvas and phrases are shown by concept id. 600 x 600 px."""
    concepts, best = ground_caption(model, data, index)
    item = data[index]
    k = item["image_index"]
    r0, r1 = data.regions.offsets[k:k + 2]
    geometry = data.regions.geometry[r0:min(r1, r0 + model.cfg.max_regions)]  # what the model saw
    image, names = None, {}
    if warehouse is not None:
        with connect(warehouse) as con:
            image = Image.open(image_files(con, [item["image_id"]])[0]).convert("RGB")
            names = dict(con.execute("SELECT id, text FROM concepts WHERE vocab = ?",
                                     [model.cfg.vocab_version]).fetchall())
            caption = con.execute("SELECT text FROM captions WHERE id = ?",
                                  [item["caption_id"]]).fetchall()[0][0]
    else:
        caption = item["caption_id"]
    w, h = image.size if image is not None else (100, 100)
    fig, ax = plt.subplots(figsize=GROUNDING, dpi=DPI)
    ax.imshow(image if image is not None else np.full((h, w, 3), 235, np.uint8))
    labels: dict[int, list[str]] = {}
    for c, r in zip(concepts, best):
        labels.setdefault(r, []).append(names.get(c, f"concept {c}"))
    colours = plt.cm.tab10.colors
    for r, (x1, y1, x2, y2, _, _) in enumerate(geometry):
        grounded = r in labels
        colour = colours[sorted(labels).index(r) % 10] if grounded else "lightgray"
        ax.add_patch(Rectangle((x1 * w, y1 * h), (x2 - x1) * w, (y2 - y1) * h, fill=False,
                               edgecolor=colour, linewidth=2.5 if grounded else 0.8))
        if grounded:
            ax.text(x1 * w + 1, y1 * h + 1, "\n".join(labels[r]), va="top", fontsize=8,
                    color="white", bbox={"facecolor": colour, "alpha": 0.8, "pad": 1})
    ax.set_title(wrap(caption, 70), fontsize=9)
    ax.axis("off")
    return save_png(fig, path)


def image_files(con, image_ids: list[str]) -> list[str]:
    """The file path of each image, in the order asked."""
    where = dict(con.execute(f"SELECT id, path FROM images WHERE id IN "
                             f"({', '.join('?' * len(image_ids))})", image_ids).fetchall())
    return [where[i] for i in image_ids]


def wrap(text: str, width: int) -> str:
    import textwrap
    return "\n".join(textwrap.wrap(text, width))


def save_png(fig, path) -> Path:
    """Save at the figure's own size (no tight bbox: the pixel size stays what was asked)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    plt.close(fig)
    return path
