"""The training-time feature cache gives the same items and batches as the in-memory data path,
is built once per key, appears whole or not at all, and refuses other tokenization settings."""
import dataclasses
import os
import pickle
import time

import numpy as np
import pytest
import torch

from model.config import load_config
from model.training import feature_cache
from model.training.data import PretrainData
from model.training.feature_cache import build_cache, open_cache
from model.training.pretrain import pretrain

LOSSES = ("vsc", "mcr", "itm", "mlm", "wpg")


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_feature_store):
    tmp = tmp_path_factory.mktemp("feature-cache")
    wh, fs, vocab = tiny_feature_store(tmp)
    cfg = load_config("tiny", feat_dim=fs["dim"], n_concepts=vocab["concepts"])
    return wh, fs["feature_set"], vocab["vocab"], cfg, tmp


@pytest.mark.parametrize("split", ["train", None])
def test_cached_items_and_batches_equal_the_in_memory_ones(store, split):
    wh, fs, vocab, cfg, tmp = store
    memory = PretrainData(wh, fs, vocab, cfg, split=split)
    # 5 images a chunk: several chunks, so offsets and image rows are shifted across chunks
    cached = open_cache(build_cache(wh, fs, vocab, cfg, split, root=tmp / "c", chunk_images=5),
                        cfg)
    assert all(isinstance(a.base, np.memmap) for a in (cached.tokens, cached.images.tags))
    assert len(cached) == len(memory) > 5 and cached.n_concepts == memory.n_concepts
    assert list(cached.caption_ids) == [str(c) for c in memory.caption_ids]
    for i in range(len(memory)):
        a, b = memory[i], cached[i]
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
            else:
                assert a[key] == b[key], key
    rows = list(range(len(memory)))[::-1]
    assert_same_batch(memory.collate([memory[i] for i in rows]),
                      cached.collate([cached[i] for i in rows]))


def assert_same_batch(a, b):
    """Every field equal, dtypes and shapes included (None where both are None)."""
    for f in dataclasses.fields(a.visual):
        x, y = getattr(a.visual, f.name), getattr(b.visual, f.name)
        assert x.dtype == y.dtype and torch.equal(x, y), f.name
    for name in ("token_ids", "token_mask", "concept_ids", "concept_mask", "concept_spans",
                 "image_index", "also_true"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None and y is None) or (x.dtype == y.dtype and torch.equal(x, y)), name
    assert a.image_ids == b.image_ids and a.caption_ids == b.caption_ids


def test_whole_batches_from_the_flat_arrays_equal_collated_items(store):
    """PretrainData.batch (the loader's path, no object per item) against collate of the items,
    in memory and through the cache, on batches in any order, with repeats and of one."""
    wh, fs, vocab, cfg, tmp = store
    memory = PretrainData(wh, fs, vocab, cfg, split="train")
    cached = open_cache(build_cache(wh, fs, vocab, cfg, "train", root=tmp / "b",
                                    chunk_images=5), cfg)
    g = torch.Generator().manual_seed(0)
    # the tiny store's captions prove no other image: 0-3 random images each, so that also_true
    # is exercised (kept where the image is in the batch, in order, -1 padded)
    counts = torch.randint(0, 4, (len(memory),), generator=g).numpy()
    true_offsets = np.r_[0, np.cumsum(counts)]
    true_rows = torch.randint(0, len(memory.images.regions.offsets) - 1,
                              (int(counts.sum()),), generator=g).numpy()
    for data in (memory, cached):
        data.true_rows, data.true_offsets = true_rows, true_offsets
    picks = [torch.randperm(len(memory), generator=g)[:n].tolist() for n in (1, 7, len(memory))]
    picks.append([3, 3, 0, len(memory) - 1, 3])
    for data in (memory, cached):
        for rows in picks:
            assert_same_batch(data.batch(rows), data.collate([data[i] for i in rows]))


def test_pickled_cache_data_maps_the_files_again_and_memory_data_travels_whole(store):
    """A DataLoader worker started by spawn (macOS, or a rank started by mp.spawn) gets the
    dataset pickled: through the cache that is the recipe to map it, not a copy of its bytes."""
    wh, fs, vocab, cfg, tmp = store
    cached = open_cache(build_cache(wh, fs, vocab, cfg, "train", root=tmp / "p"), cfg)
    memory = PretrainData(wh, fs, vocab, cfg, split="train")
    vectors = cached.regions.vectors.numel() * cached.regions.vectors.element_size()
    sent = pickle.dumps(cached)
    assert len(sent) < 4096   # the recipe, whatever the corpus size
    assert len(pickle.dumps(memory)) > vectors   # in-memory data has nothing to map: its bytes
    received = pickle.loads(sent)
    assert received.reopen == cached.reopen and received.reopen[0] is open_cache
    rows = [5, 0, len(cached) - 1]
    for data in (received, pickle.loads(pickle.dumps(memory))):
        assert_same_batch(data.batch(rows), cached.batch(rows))


@pytest.mark.slow
def test_training_through_the_cache_gives_the_same_losses(store, tmp_path, monkeypatch):
    wh, fs, vocab, _, _ = store
    monkeypatch.setenv("MVP_CACHE_DIR", str(tmp_path / "cache"))
    runs = [pretrain(wh, "joint", config="tiny", steps=3, out_dir=tmp_path / name,
                     tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", diagnose_every=0,
                     feature_cache=cached)
            for name, cached in (("memory", False), ("cached", True))]
    losses = [{k: v for k, v in r["final"].items() if k in LOSSES} for r in runs]
    assert len(losses[0]) == len(LOSSES) and losses[0] == losses[1]   # exactly
    assert len(list((tmp_path / "cache" / "training").iterdir())) == 1


@pytest.mark.slow
def test_loader_workers_give_the_same_losses(store, tmp_path, monkeypatch):
    wh, fs, vocab, _, _ = store
    monkeypatch.setenv("MVP_CACHE_DIR", str(tmp_path / "cache"))
    runs = [pretrain(wh, "joint", config="tiny", steps=3, out_dir=tmp_path / str(workers),
                     tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", diagnose_every=0,
                     feature_cache=True, train_overrides={"num_workers": workers})
            for workers in (0, 2)]
    losses = [{k: v for k, v in r["final"].items() if k in LOSSES} for r in runs]
    assert len(losses[0]) == len(LOSSES) and losses[0] == losses[1]


def test_one_build_per_key_and_new_data_gives_a_new_key(store, tmp_path):
    wh, fs, vocab, cfg, _ = store
    first = build_cache(wh, fs, vocab, cfg, root=tmp_path)
    stamp = (first / "meta.json").stat().st_mtime_ns
    assert build_cache(wh, fs, vocab, cfg, root=tmp_path) == first
    assert (first / "meta.json").stat().st_mtime_ns == stamp           # not rebuilt
    other = build_cache(wh, fs, vocab, dataclasses.replace(cfg, max_tags=6), root=tmp_path)
    assert other != first and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [first.name, other.name])


def test_a_killed_build_leaves_no_cache(store, tmp_path, monkeypatch):
    wh, fs, vocab, cfg, _ = store
    calls = []

    def dies_on_the_second_chunk(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return PretrainData(*args)
    monkeypatch.setattr(feature_cache, "PretrainData", dies_on_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        build_cache(wh, fs, vocab, cfg, root=tmp_path, chunk_images=5)
    assert list(tmp_path.iterdir()) == []   # no cache, no half-built folder
    monkeypatch.undo()
    assert (build_cache(wh, fs, vocab, cfg, root=tmp_path, chunk_images=5) / "meta.json").exists()


def test_a_build_killed_outright_is_cleared_after_the_grace_period(store, tmp_path):
    wh, fs, vocab, cfg, _ = store
    dead, running = tmp_path / ".building-dead", tmp_path / ".building-running"
    for folder in (dead, running):
        folder.mkdir()
        (folder / "tokens.bin").write_bytes(b"half")
    old = time.time() - feature_cache.ORPHAN_GRACE_S - 60
    os.utime(dead, (old, old))
    build_cache(wh, fs, vocab, cfg, root=tmp_path)
    assert not dead.exists() and running.exists()


def test_other_tokenization_settings_are_refused(store, tmp_path):
    wh, fs, vocab, cfg, _ = store
    folder = build_cache(wh, fs, vocab, cfg, root=tmp_path)
    with pytest.raises(ValueError, match="other tokenization settings"):
        open_cache(folder, dataclasses.replace(cfg, max_text_len=cfg.max_text_len - 1))


def test_the_default_root_is_on_a_local_disk(tmp_path, monkeypatch):
    """A warehouse's own folder when it is local; for an object store a local folder per
    warehouse URL (the cache is memory-mapped), never a key in the bucket."""
    from warehouse.store import Warehouse
    monkeypatch.delenv("MVP_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    local = Warehouse(tmp_path / "wh")
    assert feature_cache.default_root(local) == tmp_path / "wh" / "_cache" / "training"
    a, b = Warehouse("s3://bucket-a/wh"), Warehouse("s3://bucket-b/wh")
    root = feature_cache.default_root(a)
    assert root.is_relative_to(tmp_path / "xdg" / "mvp") and root.name == "training"
    assert root == feature_cache.default_root(Warehouse("s3://bucket-a/wh"))
    assert root != feature_cache.default_root(b)
    monkeypatch.setenv("MVP_CACHE_DIR", str(tmp_path / "node"))
    assert feature_cache.default_root(a) == tmp_path / "node" / "training"


@pytest.mark.parametrize("words", [["é", "", "abc", "日本", "x"], ["coco:1", "", "vg:22", "a"]])
def test_string_columns_take_rows_in_any_order(words):
    values = np.frombuffer("".join(words).encode(), np.uint8)
    offsets = np.r_[0, np.cumsum([len(w.encode()) for w in words])]
    column = feature_cache.StringColumn(values, offsets)
    rows = [r for r in (4, 3, 1, 0, 2, 3, 1) if r < len(words)]
    assert column.take(rows) == [words[i] for i in rows] == [column[i] for i in rows]
    assert column.take([]) == [] and list(column) == words and column[1:3] == words[1:3]
