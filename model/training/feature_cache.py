"""The training-time feature cache: one split's regions, tags and tokenized captions as fixed-width
arrays that every rank and DataLoader worker of a node maps from one copy in the page cache.
Parquet stays the system of record; a cache is derived, immutable and keyed by what it reads."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from model.config import ModelConfig
from model.training import distributed
from model.training.data import PretrainData, RegionArrays, VisualSource, provable_matches
from model.training.prefault import prefault
from warehouse.catalog import connect
from warehouse.store import ORPHAN_GRACE_S, Warehouse

FORMAT = 4                     # bump when what is stored, or how it is tokenized, changes
CHUNK_IMAGES = 20_000          # images read into memory at a time while building
# the model config fields tokenization reads: another value means other token arrays
TEXT_FIELDS = ("max_text_len", "max_tags", "cls_id", "sep_id", "pad_id", "mask_id",
               "concept_offset")
# arrays of ragged rows: values and offsets, appended chunk by chunk
# (ids as UTF-8 bytes: a batch's ids are then a gather like any other, whatever the corpus size)
RAGGED = {"tokens": "token_offsets", "concepts": "concept_offsets", "tags": "tag_offsets",
          "vectors": "region_offsets", "true_rows": "true_offsets",
          "caption_ids": "caption_id_offsets", "image_ids": "image_id_offsets"}


def default_root(wh: Warehouse) -> Path:
    """$MVP_CACHE_DIR (a node-local disk on a cluster), else the _cache folder of the
    warehouse's local folder (the root itself, or a local one for an object store: the cache
    is memory-mapped, so it must be on a local disk)."""
    return Path(os.environ.get("MVP_CACHE_DIR") or wh.local_dir() / "_cache") / "training"


def cache_key(wh: Warehouse, feature_set: str, vocab: str, cfg: ModelConfig,
              split: str | None, dataset: str | None) -> str:
    """A digest of everything the cache's contents follow from: the live parts of the tables it
    reads (new captions or regions give a new key), the feature set, vocabulary, split, dataset,
    the tokenization settings and the format."""
    snap = wh.current()
    record = {"format": FORMAT, "feature_set": feature_set, "vocab": vocab, "split": split,
              "dataset": dataset, "text": {f: getattr(cfg, f) for f in TEXT_FIELDS},
              "parts": {t: sorted(snap.tables.get(t, [])) for t in
                        ("captions", "caption_concepts", "concepts", "region_features",
                         "regions")}}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def build_cache(warehouse, feature_set: str, vocab: str, cfg: ModelConfig,
                split: str | None = "train", dataset: str | None = None, root=None,
                chunk_images: int = CHUNK_IMAGES) -> Path:
    """The cache folder of this data, built if it is not there yet. Memory is one chunk of
    images, whatever the corpus; the folder appears whole (renamed into place) or not at all,
    so a killed build leaves nothing a reader could take for a cache."""
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    root = Path(root) if root is not None else default_root(wh)
    final = root / cache_key(wh, feature_set, vocab, cfg, split, dataset)
    if (final / "meta.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    _remove_dead_builds(root)
    work = Path(tempfile.mkdtemp(dir=root, prefix=".building-"))
    try:
        writer = _Writer(work)
        for chunk in _image_chunks(wh, feature_set, split, dataset, chunk_images):
            writer.append(PretrainData(wh, feature_set, vocab, cfg, split, dataset, chunk))
        writer.append_matches(*_split_matches(wh, feature_set, split, dataset))
        writer.finish({"feature_set": feature_set, "vocab": vocab, "split": split,
                       "dataset": dataset, "format": FORMAT, "dim": cfg.feat_dim,
                       "text": {f: getattr(cfg, f) for f in TEXT_FIELDS}})
        try:
            os.rename(work, final)
        except OSError:  # another builder finished first: its cache is the same
            if not (final / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def _split_matches(wh: Warehouse, feature_set: str, split, dataset):
    """provable_matches over the whole split, in the cache's caption and image order (a caption
    may be true of an image in another chunk). Holds the split's labelled regions in memory while
    the cache builds."""
    ids = [i for chunk in _image_chunks(wh, feature_set, split, dataset, CHUNK_IMAGES)
           for i in chunk]
    with connect(wh) as con:
        con.register("_ids", pa.table({"image_id": pa.array(ids, pa.string())}))
        captions = con.sql(
            "SELECT id, image_id, text FROM captions SEMI JOIN _ids USING (image_id) "
            "WHERE (? IS NULL OR split = ?) AND (? IS NULL OR dataset = ?) ORDER BY image_id, id",
            params=[split, split, dataset, dataset]).to_arrow_table()
        return provable_matches(con, captions, {i: k for k, i in enumerate(ids)})


def _remove_dead_builds(root: Path) -> None:
    """Folders of builds killed before their rename (kill -9 skips the cleanup): those older
    than ORPHAN_GRACE_S, so a build another process is running now is left alone."""
    for folder in root.glob(".building-*"):
        if time.time() - folder.stat().st_mtime > ORPHAN_GRACE_S:
            shutil.rmtree(folder, ignore_errors=True)


def _image_chunks(wh: Warehouse, feature_set: str, split, dataset, size: int):
    """The images with captions in the split and regions in the feature set, in id order, as
    lists of at most `size` ids."""
    with connect(wh) as con:
        ids = con.sql(
            "SELECT DISTINCT image_id FROM captions WHERE (? IS NULL OR split = ?) "
            "AND (? IS NULL OR dataset = ?) AND image_id IN "
            "(SELECT image_id FROM region_features WHERE feature_set = ?) ORDER BY image_id",
            params=[split, split, dataset, dataset, feature_set]).to_arrow_table().column(0)
    for start in range(0, len(ids), size):
        yield ids.slice(start, size).to_pylist()


class _Writer:
    """Appends each chunk's arrays to raw files, offsets and image rows shifted past the
    chunks before it; `finish` records their dtypes and shapes."""

    def __init__(self, folder: Path):
        self.folder, self.meta, self.files = folder, {}, {}
        self.n_images = self.n_concepts = 0

    def _write(self, name: str, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        if name not in self.files:
            self.files[name] = open(self.folder / f"{name}.bin", "wb")
            self.meta[name] = {"dtype": array.dtype.str, "shape": [0, *array.shape[1:]]}
        self.files[name].write(array.tobytes())
        self.meta[name]["shape"][0] += len(array)

    def _ragged(self, values: str, values_array, offsets: np.ndarray) -> None:
        first = values not in self.files
        base = self.meta[values]["shape"][0] if not first else 0
        self._write(values, values_array)
        self._write(RAGGED[values], offsets[(0 if first else 1):] + base)

    def _string(self, name: str, values) -> None:
        encoded = [str(v).encode() for v in values]
        offsets = np.r_[0, np.cumsum([len(e) for e in encoded])].astype(np.int64)
        self._ragged(name, np.frombuffer(b"".join(encoded), np.uint8), offsets)

    def append(self, part: PretrainData) -> None:
        images = part.images
        self._ragged("tokens", part.tokens, part.token_offsets)
        self._ragged("concepts", part.concepts, part.concept_offsets)
        self._write("spans", part.spans)
        self._ragged("tags", images.tags, images.tag_offsets)
        self._ragged("vectors", images.regions.vectors.numpy(), images.regions.offsets)
        self._write("geometry", images.geometry.numpy())
        self._write("region_labels", images.region_labels.numpy())
        self._write("image_of", part.image_of + self.n_images)
        self._string("caption_ids", part.caption_ids)
        self._string("image_ids", images.regions.image_ids)
        self.n_images += len(images.regions.image_ids)
        self.n_concepts = part.n_concepts  # the vocabulary's, the same in every chunk

    def append_matches(self, rows: np.ndarray, offsets: np.ndarray) -> None:
        if len(offsets) - 1 != self.meta.get("image_of", {"shape": [0]})["shape"][0]:
            raise RuntimeError("feature cache: the split's captions changed while it was built")
        self._ragged("true_rows", rows, offsets)

    def finish(self, record: dict) -> None:
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        if not self.n_images:
            raise LookupError(f"no captions of split {record['split']!r} have an image with "
                              f"regions in feature set {record['feature_set']}: nothing to cache")
        (self.folder / "meta.json").write_text(json.dumps(
            {**record, "n_concepts": self.n_concepts, "images": self.n_images,
             "arrays": self.meta}, indent=1))


class StringColumn:
    """Strings stored as UTF-8 bytes and offsets (mapped arrays), read like a list of str."""

    def __init__(self, values: np.ndarray, offsets: np.ndarray):
        self.values, self.offsets = values, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(len(self))[i]]
        return self.values[self.offsets[i]:self.offsets[i + 1]].tobytes().decode()

    def take(self, rows) -> list[str]:
        """column[rows]: their bytes gathered at once, cut apart after one decode."""
        rows = np.asarray(rows, np.int64)
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        ends = np.cumsum(lengths)
        blob = self.values[np.repeat(starts - (ends - lengths), lengths)
                           + np.arange(ends[-1] if len(ends) else 0)].tobytes()
        ends = ends.tolist()
        text = blob.decode()
        if len(text) != len(blob):   # not ASCII: byte positions are not character positions
            return [blob[a:b].decode() for a, b in zip([0, *ends], ends)]
        return [text[a:b] for a, b in zip([0, *ends], ends)]

    def __iter__(self):
        return (self[k] for k in range(len(self)))


def open_cache(folder, cfg: ModelConfig) -> PretrainData:
    """The pre-training data over a cache's arrays, mapped copy-on-write: pages come from the
    page cache, shared by every process that maps them; a cache that fits in memory is mapped
    into the page tables in the background (prefault), a larger one page by page as touched."""
    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())
    if meta["format"] != FORMAT or meta["text"] != {f: getattr(cfg, f) for f in TEXT_FIELDS}:
        raise ValueError(f"feature cache {folder} was built for other tokenization settings "
                         f"({meta['text']}, format {meta['format']})")

    maps = []

    def mapped(name: str) -> np.ndarray:
        spec = meta["arrays"][name]
        if spec["shape"][0] == 0:
            return np.zeros(spec["shape"], np.dtype(spec["dtype"]))
        # a plain view of the map: slicing an np.memmap costs a subclass object per slice
        maps.append(np.asarray(np.memmap(folder / f"{name}.bin", np.dtype(spec["dtype"]), "c",
                                         shape=tuple(spec["shape"]))))
        return maps[-1]

    def strings(name: str) -> StringColumn:
        return StringColumn(mapped(name), mapped(RAGGED[name]))

    regions = RegionArrays(strings("image_ids"), mapped("region_offsets"),
                           torch.from_numpy(mapped("geometry")),
                           torch.from_numpy(mapped("vectors")))
    images = VisualSource.mapped(cfg, regions, mapped("tags"), mapped("tag_offsets"),
                                 torch.from_numpy(mapped("region_labels")))
    data = PretrainData.mapped(cfg, images, meta["n_concepts"],
                               strings("caption_ids"), mapped("image_of"),
                               mapped("tokens"), mapped("token_offsets"), mapped("concepts"),
                               mapped("concept_offsets"), mapped("spans"),
                               mapped("true_rows"), mapped("true_offsets"))
    data.reopen = (open_cache, (folder, cfg))
    data.prefaulting = prefault(maps)   # the background thread, or None
    return data


def cached_data(warehouse, feature_set: str, vocab: str, cfg: ModelConfig,
                split: str | None = "train", dataset: str | None = None, root=None
                ) -> PretrainData:
    """The split through its cache, built first if needed: under torchrun, by the first process
    of each node (the cache sits on a node's disk) while the others wait, then mapped by all."""
    build = partial(build_cache, warehouse, feature_set, vocab, cfg, split, dataset, root)
    if distributed.is_distributed():
        if int(os.environ.get("LOCAL_RANK", 0)) == 0:
            build()
        torch.distributed.barrier()
    return open_cache(build(), cfg)
