"""What several test modules share: the repository root, synthetic training batches, a tiny
trainer, and a caption as the training data path gives it."""
from pathlib import Path

import torch

from model.batch import PretrainBatch, VisualInputs
from model.config import load_config
from model.losses import IGNORE
from model.mvp import MVP
from model.training.config import load_train_config
from model.training.data import PretrainData
from model.training.task import PretrainTask
from model.training.trainer import Trainer
from warehouse.catalog import connect

ROOT = Path(__file__).resolve().parents[1]


def synthetic_batch(cfg, epoch: int, index: int, B=4, Lw=10, C=3, Lg=6, R=5) -> PretrainBatch:
    """A batch determined by its data position (epoch, index), like a seeded, shuffled loader."""
    g = torch.Generator().manual_seed(1000 * epoch + index)
    token_ids = torch.randint(1000, 2000, (B, Lw), generator=g)
    token_ids[:, 0] = cfg.cls_id
    lengths = torch.tensor([Lw, Lw - 2, Lw - 3, Lw])[:B]
    token_mask = torch.arange(Lw)[None] < lengths[:, None]
    token_ids[~token_mask] = cfg.pad_id
    concept_ids = cfg.concept_offset + torch.randint(0, cfg.n_concepts, (B, C), generator=g)
    concept_mask = torch.ones(B, C, dtype=torch.bool)
    concept_mask[1, -1] = False
    concept_ids[~concept_mask] = cfg.pad_id
    starts = torch.randint(1, 6, (B, C), generator=g)
    spans = torch.stack([starts, starts + 2], dim=-1)
    tag_ids = torch.randint(2000, 3000, (B, Lg), generator=g)
    tag_ids[:, 0], tag_ids[:, -1] = cfg.cls_id, cfg.sep_id
    region_mask = torch.ones(B, R, dtype=torch.bool)
    region_mask[2, -2:] = False
    region_labels = torch.randint(2000, 3000, (B, R), generator=g)
    region_labels[~region_mask] = IGNORE
    region_labels[1, 0] = IGNORE   # a region without a label
    return PretrainBatch(
        token_ids=token_ids, token_mask=token_mask, concept_ids=concept_ids,
        concept_mask=concept_mask, concept_spans=spans,
        visual=VisualInputs(tag_ids, torch.ones(B, Lg, dtype=torch.bool),
                            torch.randn(B, R, cfg.feat_dim, generator=g),
                            torch.rand(B, R, 6, generator=g), region_mask, region_labels),
        image_index=torch.tensor([0, 0, 1, 2])[:B],   # two captions of one image
        caption_ids=[f"c{i}" for i in range(B)], image_ids=[f"i{i}" for i in range(B)])


def make_trainer(stage="joint", seed=0, dropout=0.0, model: dict | None = None, **train):
    cfg = load_config("tiny", dropout=dropout, **(model or {}))
    tcfg = load_train_config("tiny", stage=stage, **train)
    torch.manual_seed(seed)
    return Trainer(PretrainTask(MVP(cfg), tcfg), tcfg), cfg


def training_view(s, caption_index=0):
    """A caption as PretrainData gives it, its image's boxes/labels, and the image file."""
    data = PretrainData(s["wh"], s["fs"], s["vocab"], s["model"].cfg, split=None)
    item = data[caption_index]
    k = item["image_index"]
    r0, r1 = data.regions.offsets[k:k + 2]
    with connect(s["wh"]) as con:
        boxes = dict((rid, b) for rid, *b in con.execute(
            "SELECT region_id, x1, y1, x2, y2 FROM region_features WHERE feature_set = ? "
            "AND image_id = ?", [s["fs"], item["image_id"]]).fetchall())
        path, text = con.execute(
            "SELECT i.path, c.text FROM captions c JOIN images i ON i.id = c.image_id "
            "WHERE c.id = ?", [item["caption_id"]]).fetchall()[0]
    return (data, item, [boxes[r] for r in data.regions.region_id[r0:r1]],
            list(data.regions.label[r0:r1]), path, text)
