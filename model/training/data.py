"""The pre-training data path: captions joined to their image's region features, tags and concepts,
read once into flat arrays so that an item is a few slices."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import BatchSampler, Dataset, Sampler

from features.caption_truth import also_true, labelled_regions
from features.feature_sets import check_compatible, require_feature_set
from features.load import RegionFeatures, load_region_features
from model.batch import PretrainBatch, VisualInputs, pad_rows
from model.config import ModelConfig
from model.text import IGNORE_LABEL, caption_input, label_word, tag_sequence
from warehouse.catalog import connect
from warehouse.store import Warehouse


def ragged_layout(offsets: np.ndarray, rows: np.ndarray, limit: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded layout of CSR rows `rows` (each cut to its first `limit` entries): the value index
    each [len(rows), longest] slot reads (0 on padding) and the mask of real slots."""
    starts = offsets[rows]
    counts = offsets[rows + 1] - starts
    if limit is not None:
        counts = np.minimum(counts, limit)
    steps = np.arange(int(counts.max(initial=0)))
    mask = steps[None] < counts[:, None]
    return torch.from_numpy(np.where(mask, starts[:, None] + steps[None], 0)), torch.from_numpy(mask)


def padded(values, slots: torch.Tensor, mask: torch.Tensor, pad) -> torch.Tensor:
    """values (a NumPy array or tensor, rows may have trailing dims) laid out as `ragged_layout`
    says, `pad` on padding: one gather for the whole batch, then one fill."""
    flat = slots.reshape(-1)
    if len(values) == 0:   # nothing to read (e.g. no concepts at all): every slot is padding
        flat = flat[:0]
    taken = (torch.from_numpy(values[flat.numpy()]) if isinstance(values, np.ndarray)
             else torch.index_select(values, 0, flat))
    if len(values) == 0:
        return torch.full((*mask.shape, *taken.shape[1:]), pad, dtype=taken.dtype)
    taken = taken.view(*mask.shape, *taken.shape[1:])
    if not mask.all():   # by index, not by bool mask: a bool index_put costs the whole batch
        taken[(~mask).nonzero(as_tuple=True)] = pad
    return taken


def gather_ragged(values, offsets: np.ndarray, rows: np.ndarray, pad
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR rows `rows` of (values, offsets) padded with `pad`, and their real-entry mask: what
    pad_rows gives for the same rows sliced one by one."""
    slots, mask = ragged_layout(offsets, rows)
    return padded(values, slots, mask, pad), mask


def strings_at(column, rows: np.ndarray) -> list[str]:
    """column[rows] as str: a NumPy array (in memory) or a feature cache's StringColumn."""
    taken = column.take(rows)
    return [str(v) for v in taken] if isinstance(taken, np.ndarray) else taken


def _flat(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged int rows as (values, offsets): row k is values[offsets[k]:offsets[k+1]]."""
    offsets = np.zeros(len(rows) + 1, np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    values = np.fromiter((v for r in rows for v in r), np.int64, count=int(offsets[-1]))
    return values, offsets


class PretrainData(Dataset):
    """One item per caption of an image that has region features in `feature_set_id`. All is
    read here, once (DuckDB/Arrow; the region vectors as one tensor with per-image offsets), and
    tokenised into flat arrays, so an item is a few slices, cheap in DataLoader workers."""
    # (function, args) that maps the same arrays again, for data over memory maps: pickled (to a
    # DataLoader worker started by spawn, or a rank) it travels as this recipe, not as its bytes
    reopen: tuple | None = None
    prefaulting = None   # the thread mapping a cache's pages in (model/training/prefault.py)

    def __init__(self, warehouse, feature_set_id: str, vocab_id: str, cfg: ModelConfig,
                 split: str | None = "train", dataset: str | None = None,
                 image_ids: list[str] | None = None):
        """Read into memory; `image_ids` keeps only those images' captions (a chunk of a
        feature cache's build). model/training/feature_cache.py opens the same data mapped."""
        wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
        require_model_feature_set(wh, feature_set_id, cfg)
        if cfg.vocab_version is not None and cfg.vocab_version != vocab_id:
            raise ValueError(f"concept vocabulary {vocab_id!r} is not the one the model was "
                             f"built for ({cfg.vocab_version!r})")
        self.cfg = cfg

        with connect(wh) as con:
            n_vocab = con.execute("SELECT count(*), max(id) FROM concepts WHERE vocab = ?",
                                  [vocab_id]).fetchall()[0]
            if not n_vocab[0]:
                raise LookupError(f"no concept vocabulary {vocab_id!r} in warehouse {wh.root}")
            self.n_concepts = int(n_vocab[1]) + 1
            if cfg.n_concepts < self.n_concepts:
                raise ValueError(f"config n_concepts={cfg.n_concepts} is smaller than vocabulary "
                                 f"{vocab_id} ({self.n_concepts} concepts)")
            con.register("_chosen", pa.table({"image_id": pa.array(image_ids or [], pa.string())}))
            captions = con.sql(
                "SELECT id, image_id, text FROM captions WHERE (? IS NULL OR split = ?) "
                "AND (? IS NULL OR dataset = ?) "
                "AND (? OR image_id IN (SELECT image_id FROM _chosen)) ORDER BY id",
                params=[split, split, dataset, dataset, image_ids is None]).to_arrow_table()
            self.images = VisualSource(wh, feature_set_id,
                                    pc.unique(captions["image_id"]).to_pylist(), cfg)
            self.regions = self.images.regions
            # captions whose image has no features in this set are dropped
            con.register("_kept", pa.table({"image_id": self.regions.image_ids.astype(object)}))
            con.register("_captions", captions)
            captions = con.sql(
                # image order: a feature cache built image chunk by image chunk holds the same
                "SELECT c.* FROM _captions c SEMI JOIN _kept USING (image_id) "
                "ORDER BY c.image_id, c.id"
            ).to_arrow_table()
            con.register("_captions", captions)
            mentions = con.sql(
                "SELECT caption_id, concept_id, token_start, token_end FROM caption_concepts "
                "SEMI JOIN _captions c ON caption_id = c.id WHERE vocab = ? "
                "ORDER BY caption_id, token_start, token_end, concept_id", params=[vocab_id]
            ).to_arrow_table()

            # a chunk's captions may be true of images in other chunks: the cache build finds
            # those over the whole split (feature_cache.py); a whole split finds them here
            self.true_rows, self.true_offsets = (None, None) if image_ids is not None else \
                provable_matches(con, captions, self.images.row)

        self.caption_ids = captions["id"].to_numpy(zero_copy_only=False)
        self.image_of = self.images.rows_of(captions["image_id"].to_pylist())
        self._build_text(captions["text"].to_pylist(), mentions)

    def _build_text(self, texts: list[str], mentions: pa.Table) -> None:
        by_caption: dict[str, list[tuple[int, int, int]]] = {}
        for cid, concept, s, e in zip(*(mentions[c].to_pylist() for c in mentions.column_names)):
            by_caption.setdefault(cid, []).append((concept, s, e))
        tokens, concepts, spans = [], [], []
        for cid, text in zip(self.caption_ids, texts):
            ids, concept_ids, mapped, _ = caption_input(text, by_caption.get(cid, []), self.cfg)
            tokens.append(ids)
            concepts.append(concept_ids)
            spans.append([p for span in mapped for p in span])
        self.tokens, self.token_offsets = _flat(tokens)
        self.concepts, self.concept_offsets = _flat(concepts)
        self.spans, _ = _flat(spans)  # two entries per concept: offsets are 2 * concept_offsets

    @classmethod
    def mapped(cls, cfg: ModelConfig, images: "VisualSource", n_concepts: int, caption_ids,
               image_of: np.ndarray, tokens: np.ndarray, token_offsets: np.ndarray,
               concepts: np.ndarray, concept_offsets: np.ndarray, spans: np.ndarray,
               true_rows: np.ndarray, true_offsets: np.ndarray) -> "PretrainData":
        """The data over arrays read elsewhere (a feature cache's memory maps)."""
        data = cls.__new__(cls)
        data.cfg, data.images, data.regions, data.n_concepts = cfg, images, images.regions, n_concepts
        data.caption_ids, data.image_of = caption_ids, image_of
        data.tokens, data.token_offsets = tokens, token_offsets
        data.concepts, data.concept_offsets, data.spans = concepts, concept_offsets, spans
        data.true_rows, data.true_offsets = true_rows, true_offsets
        return data

    def __reduce_ex__(self, protocol):
        return self.reopen if self.reopen is not None else super().__reduce_ex__(protocol)

    def __len__(self) -> int:
        return len(self.caption_ids)

    def majority_word(self) -> int:
        """The most frequent caption word token ([CLS] excluded): MLM's majority baseline."""
        return int(np.bincount(self.tokens[self.tokens != self.cfg.cls_id]).argmax())

    def __getitem__(self, i: int) -> dict:
        t0, t1 = self.token_offsets[i:i + 2]
        c0, c1 = self.concept_offsets[i:i + 2]
        item = {
            "token_ids": torch.from_numpy(self.tokens[t0:t1]),
            "concept_ids": torch.from_numpy(self.concepts[c0:c1]),
            "concept_spans": torch.from_numpy(self.spans[2 * c0:2 * c1]).view(-1, 2),
            **self.images.item(int(self.image_of[i])),
            "caption_id": str(self.caption_ids[i]),
        }
        if self.true_rows is not None:
            m0, m1 = self.true_offsets[i:i + 2]
            item["also_true"] = torch.from_numpy(self.true_rows[m0:m1])
        return item

    def batch(self, indices) -> PretrainBatch:
        """The batch of these captions straight from the flat arrays: equal to
        collate([self[i] for i in indices]), without a Python object per item."""
        rows, pad = np.asarray(indices, np.int64), self.cfg.pad_id
        token_ids, token_mask = gather_ragged(self.tokens, self.token_offsets, rows, pad)
        concept_ids, concept_mask = gather_ragged(self.concepts, self.concept_offsets, rows, pad)
        concept_spans, _ = gather_ragged(self.spans.reshape(-1, 2), self.concept_offsets, rows, 0)
        visual = self.images.batch(self.image_of[rows])
        also = None
        if self.true_rows is not None:
            also, real = gather_ragged(self.true_rows, self.true_offsets, rows, -1)
            also = _compact(also, real & torch.isin(also, visual["image_index"]))
        return PretrainBatch(
            token_ids=token_ids, token_mask=token_mask, concept_ids=concept_ids,
            concept_mask=concept_mask, concept_spans=concept_spans, **visual,
            caption_ids=strings_at(self.caption_ids, rows), also_true=also)

    __getitems__ = batch   # torch's DataLoader fetches a whole batch through this hook

    def collate(self, items: list[dict] | PretrainBatch) -> PretrainBatch:
        if isinstance(items, PretrainBatch):   # a DataLoader fetched it whole (__getitems__)
            return items
        pad = self.cfg.pad_id
        token_ids, token_mask = pad_rows([x["token_ids"] for x in items], pad)
        concept_ids, concept_mask = pad_rows([x["concept_ids"] for x in items], pad)
        concept_spans, _ = pad_rows([x["concept_spans"] for x in items], 0)
        visual = self.images.collate(items)
        return PretrainBatch(
            token_ids=token_ids, token_mask=token_mask, concept_ids=concept_ids,
            concept_mask=concept_mask, concept_spans=concept_spans.view(len(items), -1, 2),
            **visual, caption_ids=[x["caption_id"] for x in items],
            also_true=_in_batch(items, visual["image_index"]))


def _compact(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Each row's kept entries moved to its front in order, -1 after them, cut to the most any
    row keeps."""
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    kept = torch.where(keep, values, -1).gather(1, order)
    return kept[:, :int(keep.sum(1).max())] if len(keep) else kept


def _in_batch(items: list[dict], image_index: torch.Tensor) -> torch.Tensor | None:
    """[B, K] each item's also-true image rows that are in this batch (K <= B), -1 padded."""
    if "also_true" not in items[0]:
        return None
    rows = [x["also_true"][torch.isin(x["also_true"], image_index)] for x in items]
    return pad_rows(rows, -1)[0]


def provable_matches(con, captions: pa.Table, image_row) -> tuple[np.ndarray, np.ndarray]:
    """CSR (values, offsets) over `captions` (id, image_id, text; in data order): the rows
    (`image_row`: image id -> row) of the other images each caption is provably true of, read
    from the labelled regions of those images (features/caption_truth.py)."""
    con.register("_images", pa.table({"image_id": pa.array(list(image_row), pa.string())}))
    matches = also_true(zip(captions["text"].to_pylist(), captions["image_id"].to_pylist()),
                        labelled_regions(con, "_images"))
    return _flat([[image_row[i] for i in m] for m in matches])


def require_model_feature_set(wh: Warehouse, feature_set_id: str, cfg: ModelConfig) -> None:
    """The feature set exists and is the one (and width) the model was built for: a model must
    not silently train on, or be evaluated with, other vectors."""
    spec = require_feature_set(wh, feature_set_id)
    check_compatible(spec, feature_set=cfg.feature_set, dim=cfg.feat_dim)


class VisualSource:
    """The visual input of every image that has region features in a feature set: region vectors
    and geometry (CSR by image row), and tags `[CLS] label BPE tokens... [SEP]` of the image's
    distinct region labels (first-seen order of its feature rows), cut to max_tags. Shared by the
    pre-training and fine-tuning data paths; images without features are simply absent."""

    def __init__(self, wh: Warehouse, feature_set_id: str, image_ids, cfg: ModelConfig):
        self.cfg = cfg
        self.regions = _in_image_id_order(load_region_features(wh, feature_set_id, image_ids))
        self.geometry = torch.from_numpy(np.array(self.regions.geometry, np.float32))
        rf = self.regions
        words = {label: label_word(label) for label in set(rf.label)}
        self.region_labels = torch.tensor([words[label] for label in rf.label], dtype=torch.long)
        self.tags, self.tag_offsets = _flat([
            tag_sequence(rf.label[rf.offsets[k]:rf.offsets[k + 1]], cfg)
            for k in range(len(rf.image_ids))])

    @classmethod
    def mapped(cls, cfg: ModelConfig, regions: "RegionArrays", tags: np.ndarray,
               tag_offsets: np.ndarray, region_labels: torch.Tensor) -> "VisualSource":
        """The visual side over arrays read elsewhere (a feature cache's memory maps)."""
        side = cls.__new__(cls)
        side.cfg, side.regions, side.geometry = cfg, regions, regions.geometry
        side.region_labels = region_labels
        side.tags, side.tag_offsets = tags, tag_offsets
        return side

    @functools.cached_property
    def row(self) -> dict[str, int]:
        """Image id -> row; built on first use (the pre-training path never needs it)."""
        return {str(img): k for k, img in enumerate(self.regions.image_ids)}

    def rows_of(self, image_ids: list[str]) -> np.ndarray:
        """Row of each image (all must have features)."""
        return np.array([self.row[i] for i in image_ids], np.int64)

    def tag_words(self, row: int) -> np.ndarray:
        """The image's tag BPE ids without [CLS]/[SEP]."""
        g0, g1 = self.tag_offsets[row:row + 2]
        return self.tags[g0 + 1:g1 - 1]

    def item(self, row: int) -> dict:
        g0, g1 = self.tag_offsets[row:row + 2]
        r0, r1 = self.regions.offsets[row:row + 2]
        r1 = min(r1, r0 + self.cfg.max_regions)
        return {"tag_ids": torch.from_numpy(self.tags[g0:g1]),
                "regions": self.regions.vectors[r0:r1], "geometry": self.geometry[r0:r1],
                "image_index": row, "image_id": str(self.regions.image_ids[row])}

    def batch(self, rows) -> dict:
        """The padded visual inputs of these image rows and which images they are, named as in
        the batch dataclasses; each array gathered in one indexing operation."""
        rows = np.asarray(rows, np.int64)
        tag_ids, tag_mask = gather_ragged(self.tags, self.tag_offsets, rows, self.cfg.pad_id)
        slots, mask = ragged_layout(self.regions.offsets, rows, self.cfg.max_regions)
        # vectors stay in the feature set's dtype (half the bytes to copy and move to a GPU); the
        # model casts them where it reads them, exactly as a cast here would
        visual = VisualInputs(tag_ids, tag_mask, padded(self.regions.vectors, slots, mask, 0.0),
                              padded(self.geometry, slots, mask, 0.0), mask,
                              padded(self.region_labels, slots, mask, IGNORE_LABEL))
        return {"visual": visual, "image_index": torch.from_numpy(rows),
                "image_ids": strings_at(self.regions.image_ids, rows)}

    def collate(self, items: list[dict]) -> dict:
        """`batch` of the items' images."""
        return self.batch([x["image_index"] for x in items])


def _in_image_id_order(rf: RegionFeatures) -> RegionFeatures:
    """The images in id order (rows then match a feature cache's, built in that order); a copy
    only when they are not stored so already."""
    order = np.argsort(rf.image_ids, kind="stable")
    if (order == np.arange(len(order))).all():
        return rf
    counts = np.diff(rf.offsets)[order]
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
    # region rows of the reordered images: each image's run of rows, in the new order
    rows = np.repeat(rf.offsets[order] - offsets[:-1], counts) + np.arange(offsets[-1])
    per_region = {f: getattr(rf, f)[rows] for f in ("image_id", "region_id", "box_source",
                                                     "label", "score", "geometry")}
    return dataclasses.replace(rf, image_ids=rf.image_ids[order], offsets=offsets,
                               vectors=rf.vectors[torch.from_numpy(rows)], **per_region)


@dataclasses.dataclass
class RegionArrays:
    """The region columns training reads (features.load.RegionFeatures without its per-region
    strings): image k's regions are rows offsets[k]:offsets[k+1]."""
    image_ids: Sequence[str]
    offsets: np.ndarray
    geometry: torch.Tensor        # [n, 6] float32
    vectors: torch.Tensor         # [n, dim] in the feature set's dtype


class DeterministicSampler(Sampler[int]):
    """The epoch's permutation of range(n), a function of (seed, epoch) only, from position
    `start` on: a run resumed after `start` samples of an epoch sees exactly the rest of it."""

    def __init__(self, n: int, seed: int, epoch: int, start: int = 0):
        if not 0 <= start <= n:
            raise ValueError(f"start must be in [0, {n}], got {start}")
        self.n, self.seed, self.epoch, self.start = n, seed, epoch, start

    def permutation(self) -> torch.Tensor:
        # hash (seed, epoch) so that neighbouring pairs give unrelated generator seeds
        key = hashlib.sha256(f"{self.seed}:{self.epoch}".encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)
        return torch.randperm(self.n, generator=g)

    def __iter__(self):
        return iter(self.permutation()[self.start:].tolist())

    def __len__(self) -> int:
        return self.n - self.start

    def batches(self, batch_size: int, drop_last: bool = False) -> BatchSampler:
        """For DataLoader(batch_sampler=...)."""
        return BatchSampler(self, batch_size, drop_last)
