"""Region feature extraction into the warehouse, one published shard at a time:
    spec = plan_feature_set(wh, backbone="ViT-B-32")      # learn dim and weights hash
    register_feature_set(wh, spec)                         # the feature_sets row (idempotent)
    for shard in chunks(pending_images(wh, spec)):         # images the feature set lacks
        extract_shard(wh, spec, shard)                     # decode, forward, RoIAlign, publish
A shard holds about COMMIT_BYTES of vectors; the forward pass batches independently of it."""
from __future__ import annotations

import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from features.backbone import Backbone, load_backbone, resolve_pretrained
from features.boxes import ImageRegions, grid_regions, regions_for_images
from features.feature_sets import FeatureSetMismatch, FeatureSetSpec, register_feature_set
from features.geometry import clip_boxes, grid_boxes, normalized_geometry, to_input_pixels
from features.roi import pool_regions
from warehouse import vectors
from warehouse.catalog import connect
from warehouse.ingest.emitter import stable_id
from warehouse.publish import new_build, publish_new_rows
from warehouse.schemas import IMAGE_FEATURES, REGION_FEATURES, REJECTS
from warehouse.store import Snapshot, Warehouse

__all__ = ["EXTRACT_CODE_VERSION", "plan_feature_set", "register_feature_set", "pending_images",
           "extract_shard", "extract_features", "images_per_commit", "encode_regions",
           "backbone_for_feature_set", "EncodedImage", "encode_image"]

# Bump whenever the vectors this code writes for the same inputs would change (preprocessing,
# map choice, RoIAlign settings, projection, box policy): it is part of the feature-set id.
EXTRACT_CODE_VERSION = "1"
BOX_POLICY = "regions|grid"   # the regions table's boxes, else a grid
DECODE_WORKERS = max(2, min(8, os.cpu_count() or 1))  # PIL decode + resize release the GIL
# A shard commits about this many bytes of vectors: few commits for a large corpus (1M images at
# 50 x 512-d fp16 are ~50 GiB: ~50 commits), while the forward pass keeps its own batch size.
COMMIT_BYTES = 1 << 30
BATCH_SIZE = {"cuda": 256, "cpu": 32}  # images per forward pass when none is given


def plan_feature_set(warehouse: str | Warehouse, backbone: str = "ViT-B-32",
                     pretrained: str | None = None, max_regions: int = 50, grid: int = 4,
                     dtype: str = "float16", image_size: int | None = None) -> FeatureSetSpec:
    """The feature set these settings define (loads the backbone once to learn its output width
    and weights hash). Nothing is written; `warehouse` is where it will be extracted."""
    if dtype not in vectors.DTYPES:
        raise ValueError(f"dtype must be one of {sorted(vectors.DTYPES)}, got {dtype!r}")
    if max_regions < 1 or grid < 1 or grid * grid > max_regions:
        raise ValueError(f"need max_regions >= 1 and 1 <= grid*grid <= max_regions, got "
                         f"max_regions={max_regions}, grid={grid}")
    if not _warehouse(warehouse).exists():
        raise FileNotFoundError(f"no warehouse at {warehouse}: ingest data first")
    bb = load_backbone(backbone, pretrained, image_size)
    return FeatureSetSpec(
        kind="extracted", backbone=backbone, pretrained=bb.pretrained,
        weights_sha256=bb.weights_sha256, box_source=BOX_POLICY, image_size=bb.image_size,
        dim=bb.dim, dtype=dtype, max_regions=max_regions, grid=grid,
        code_version=EXTRACT_CODE_VERSION,
        pretrained_source=resolve_pretrained(pretrained)[0]).with_created()  # absolute path


def _warehouse(warehouse: str | Warehouse) -> Warehouse:
    return warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)


def _feature_builds(snapshot: Snapshot, spec: FeatureSetSpec) -> list[str]:
    return [b["build_id"] for b in snapshot.builds
            if b.get("kind") == "features" and b.get("params", {}).get("feature_set") == spec.id]


def _pending(wh: Warehouse, snapshot: Snapshot, spec: FeatureSetSpec,
             image_ids: list[str] | None, dataset: str | None,
             max_images: int | None = None) -> list[str]:
    with connect(wh, snapshot) as con:
        # images this feature set already rejected (they no longer decode) are done too, so
        # a rerun does not retry them forever; their builds are named in the manifests.
        con.register("_builds", pa.table({"build_id": pa.array(_feature_builds(snapshot, spec),
                                                               pa.string())}))
        restrict = ""
        if image_ids is not None:
            con.register("_only", pa.table({"id": pa.array(list(image_ids), pa.string())}))
            restrict = "AND i.id IN (SELECT id FROM _only)"
        if max_images is not None:
            # a fixed sample of the dataset (md5 order: stable across runs and DuckDB versions),
            # so a rerun extracts no further images and a larger N extends the same sample
            restrict += f""" AND i.id IN (SELECT id FROM images WHERE (? IS NULL OR dataset = ?)
                                          ORDER BY md5(id) LIMIT {int(max_images)})"""
        rows = con.execute(f"""
            SELECT i.id FROM images i
            WHERE (? IS NULL OR i.dataset = ?) {restrict}
              AND NOT EXISTS (SELECT 1 FROM image_features f
                              WHERE f.feature_set = ? AND f.image_id = i.id)
              AND NOT EXISTS (SELECT 1 FROM rejects r JOIN _builds b ON r.ingest_id = b.build_id
                              WHERE r.record_ref = i.id)
            ORDER BY i.id""", [dataset, dataset] + ([dataset, dataset] if max_images is not None
                                                     else []) + [spec.id]).fetchall()
    return [r[0] for r in rows]


def _published_since(wh: Warehouse, base: Snapshot, snapshot: Snapshot, spec: FeatureSetSpec
                     ) -> set[str]:
    """Images that commits after `base`, up to `snapshot`, extracted or rejected for the
    feature set. Reads only the parts those commits added: a check costs what was published
    meanwhile, not the size of the feature set."""
    if snapshot.version == base.version:
        return set()
    added = snapshot.since(base)
    with connect(wh, added) as con:
        con.register("_builds", pa.table({"build_id": pa.array(_feature_builds(added, spec),
                                                               pa.string())}))
        rows = con.execute("""
            SELECT image_id FROM image_features WHERE feature_set = ?
            UNION
            SELECT r.record_ref FROM rejects r JOIN _builds b ON r.ingest_id = b.build_id""",
                           [spec.id]).fetchall()
    return {r[0] for r in rows}


def images_per_commit(spec: FeatureSetSpec, commit_bytes: int = COMMIT_BYTES) -> int:
    """How many images make about `commit_bytes` of vectors (every region slot filled, plus the
    global vector): the shard size that keeps commits few and large, whatever the batch."""
    per_image = (spec.max_regions + 1) * spec.dim * vectors.DTYPES[spec.dtype].itemsize
    return max(1, commit_bytes // per_image)


def pending_images(warehouse: str | Warehouse, spec: FeatureSetSpec,
                   image_ids: list[str] | None = None, dataset: str | None = None,
                   max_images: int | None = None, version: int | None = None) -> list[str]:
    """Sorted ids of images (optionally only among `image_ids`, or of one dataset, or of its
    fixed sample of `max_images`) that the feature set has neither extracted nor rejected, at
    `version` (default: the newest)."""
    wh = _warehouse(warehouse)
    snap = wh.current() if version is None else wh.snapshot_at(version)
    return _pending(wh, snap, spec, image_ids, dataset, max_images)


def encode_regions(backbone: Backbone, pixels: torch.Tensor, boxes: list[torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass for a batch: pixels [B, 3, S, S] and one [k_i, 4] box tensor per image
    (input pixels) -> (region vectors [sum k_i, dim], global vectors [B, dim]), float32 on CPU."""
    feature_map, global_vectors = backbone.forward(pixels)
    pooled = pool_regions(feature_map, boxes, backbone.image_size)
    regions = backbone.project(pooled)
    return regions.float().cpu(), global_vectors.float().cpu()


@dataclass
class EncodedImage:
    """One image as a feature set sees it (what serving feeds the model)."""
    boxes: np.ndarray          # [k, 4] float32, image pixels, after clipping (or the grid)
    box_source: str            # "given" | "grid"
    geometry: np.ndarray       # [k, 6] float32, METHOD.md's normalised geometry
    vectors: torch.Tensor      # [k, dim] float32 region vectors
    global_vector: torch.Tensor  # [dim] float32


def encode_image(backbone: Backbone, image: Image.Image, boxes: np.ndarray | None, grid: int,
                 max_regions: int) -> EncodedImage:
    """Region vectors of one decoded image by the extraction recipe: the same preprocessing,
    box -> input-pixel mapping, RoIAlign and projection as `extract_shard`. `boxes` [k, 4] are
    image pixels (x1, y1, x2, y2), best first: clipped to the image, boxes with no area dropped,
    the first `max_regions` kept; None (or none usable) gives the feature set's grid, as images
    without regions get at extraction time."""
    rgb = image.convert("RGB")
    w, h = rgb.size
    usable = np.zeros(0, bool)
    if boxes is not None and len(boxes):
        clipped, usable = clip_boxes(np.asarray(boxes, np.float32), w, h)
    if usable.any():
        chosen, source = clipped[usable][:max_regions], "given"
    else:
        chosen, source = grid_boxes(w, h, grid), "grid"
    pixel_boxes = torch.from_numpy(to_input_pixels(chosen, w, h, backbone.image_size))
    vectors, global_vectors = encode_regions(backbone, backbone.preprocess(rgb)[None],
                                             [pixel_boxes])
    return EncodedImage(boxes=chosen, box_source=source,
                        geometry=normalized_geometry(chosen, w, h), vectors=vectors,
                        global_vector=global_vectors[0])


def backbone_for_feature_set(spec: FeatureSetSpec, weights_path: str | None = None) -> Backbone:
    """The backbone that made `spec`'s vectors, checked against its recorded weights hash, width
    and image size (FeatureSetMismatch otherwise). `weights_path`: where the checkpoint file is
    in this process, for feature sets extracted from a local file (e.g. one packaged with a
    served model); random init needs none (it is seeded)."""
    if weights_path is not None:
        spec = replace(spec, pretrained_source=str(weights_path))
    return _backbone_for(spec)


# ---- one shard ---------------------------------------------------------------------------------
def _backbone_for(spec: FeatureSetSpec) -> Backbone:
    # "none" is passed on, not None: for EfficientNet None means its default ImageNet weights
    source = spec.pretrained_source or spec.pretrained
    bb = load_backbone(spec.backbone, source, spec.image_size)
    if (bb.weights_sha256, bb.dim, bb.image_size) != (spec.weights_sha256, spec.dim,
                                                      spec.image_size):
        raise FeatureSetMismatch(
            f"feature set {spec.id}: backbone {spec.backbone} loaded from {source!r} has weights "
            f"{bb.weights_sha256[:12]}, {bb.dim}-d at {bb.image_size}px; the feature set was "
            f"planned with {spec.weights_sha256[:12]}, {spec.dim}-d at {spec.image_size}px")
    return bb


def _decode(backbone: Backbone, image: dict) -> torch.Tensor | str:
    """The preprocessed pixels of an image, or why it can no longer be used. Like ingest, no
    EXIF rotation: boxes refer to the pixels as stored."""
    try:
        with Image.open(image["path"]) as im:
            im.load()
            if im.size != (image["width"], image["height"]):
                return (f"image size changed since ingest: recorded {image['width']}x"
                        f"{image['height']}, file is {im.size[0]}x{im.size[1]}")
            rgb = im.convert("RGB")
        return backbone.preprocess(rgb)
    except FileNotFoundError:
        return "image file is missing at feature time"
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, bomb errors...
        return f"image no longer decodes: {type(e).__name__}: {e}"[:300]


class _ShardRows:
    """Columns of the shard's three tables, filled batch by batch."""

    def __init__(self, spec: FeatureSetSpec, build_id: str):
        self.spec, self.build_id = spec, build_id
        self.regions: dict[str, list] = {k: [] for k in ("image_id", "region_id", "box_source",
                                                         "label", "score")}
        self.boxes: list[np.ndarray] = []
        self.geometry: list[np.ndarray] = []
        self.region_vectors: list[np.ndarray] = []
        self.image_ids: list[str] = []
        self.image_vectors: list[np.ndarray] = []
        self.rejects: list[dict] = []
        self.reject_images: list[str] = []   # the image each reject belongs to
        self.clipped = 0

    def reject(self, image: dict, ref: str, reason: str, raw: dict) -> None:
        self.rejects.append({
            "id": stable_id("features", self.spec.id, ref, reason), "dataset": image["dataset"],
            "source_file": image["path"], "record_ref": ref, "reason": reason,
            "raw": json.dumps({"feature_set": self.spec.id, **raw}), "ingest_id": self.build_id})
        self.reject_images.append(image["id"])

    def tables(self, drop: set[str] = frozenset()) -> dict[str, pa.Table]:
        """Arrow tables in the warehouse schemas, without the images in `drop`."""
        spec, n = self.spec, len(self.regions["image_id"])
        region_table = pa.Table.from_arrays([
            pa.array([spec.id] * n, pa.string()),
            pa.array(self.regions["image_id"], pa.string()),
            pa.array(self.regions["region_id"], pa.string()),
            pa.array(self.regions["box_source"], pa.string()),
            pa.array(self.regions["label"], pa.string()),
            pa.array(self.regions["score"], pa.float32()),
            *[pa.array(c) for c in _stack(self.boxes, 4).T],
            pa.FixedSizeListArray.from_arrays(_stack(self.geometry, 6).ravel(), 6),
            vectors.encode(_storable(_stack(self.region_vectors, spec.dim), spec.dtype),
                           spec.dtype),
            pa.array([self.build_id] * n, pa.string())], schema=REGION_FEATURES)
        m = len(self.image_ids)
        image_table = pa.Table.from_arrays([
            pa.array([spec.id] * m, pa.string()), pa.array(self.image_ids, pa.string()),
            vectors.encode(_storable(_stack(self.image_vectors, spec.dim), spec.dtype),
                           spec.dtype),
            pa.array([self.build_id] * m, pa.string())], schema=IMAGE_FEATURES)
        rejects = pa.Table.from_pylist(
            [r for r, i in zip(self.rejects, self.reject_images) if i not in drop], schema=REJECTS)
        if drop:
            keep = pa.array([i not in drop for i in self.regions["image_id"]])
            region_table = region_table.filter(keep)
            image_table = image_table.filter(pa.array([i not in drop for i in self.image_ids]))
        return {"region_features": region_table, "image_features": image_table,
                "rejects": rejects}


def _stack(parts: list[np.ndarray], width: int) -> np.ndarray:
    return np.concatenate(parts).astype(np.float32) if parts else \
        np.zeros((0, width), np.float32)


def _storable(vecs: np.ndarray, dtype: str) -> np.ndarray:
    """Refuse vectors that the stored dtype would turn into inf or nan, rather than store them."""
    if not np.isfinite(vecs).all():
        raise ValueError("the backbone produced non-finite vectors")
    if dtype == "float16" and vecs.size and np.abs(vecs).max() > np.finfo(np.float16).max:
        raise ValueError(f"vector values up to {np.abs(vecs).max():.3g} overflow float16; "
                         "extract with dtype='float32'")
    return vecs


def _usable_regions(rows: _ShardRows, image: dict, regions: ImageRegions, grid: int
                    ) -> tuple[ImageRegions, np.ndarray]:
    """Boxes clipped to the image; a box with no area inside it is rejected with its reason. If
    no box is left the image falls back to the grid, so every extracted image has regions."""
    w, h = image["width"], image["height"]
    clipped, usable = clip_boxes(regions.boxes, w, h)
    rows.clipped += int(np.sum(usable & np.any(clipped != regions.boxes, axis=1)))
    for k in np.flatnonzero(~usable):
        box = [round(float(v), 2) for v in regions.boxes[k]]
        rows.reject(image, regions.region_ids[k], f"box outside the image: {box} in {w}x{h}",
                    {"image_id": image["id"], "region_id": regions.region_ids[k], "box": box})
    if usable.all():
        return regions, clipped
    if not usable.any():
        fallback = grid_regions(image["id"], w, h, grid)
        return fallback, fallback.boxes
    return regions.subset(usable), clipped[usable]


def _extract(wh: Warehouse, spec: FeatureSetSpec, image_ids: list[str], batch_size: int | None,
             on_images: Callable[[int], None] | None, base: Snapshot) -> dict:
    """Extract `image_ids` (pending at `base`) and publish them as one commit."""
    started = time.time()
    backbone = _backbone_for(spec)
    batch_size = batch_size or BATCH_SIZE.get(backbone.device.type, BATCH_SIZE["cpu"])
    build_id = f"features-{spec.id}-{uuid.uuid4().hex[:12]}"
    rows = _ShardRows(spec, build_id)
    with connect(wh) as con:
        _require_registered(con, wh, spec)  # fail before the work, not at publish time
        con.register("_ids", pa.table({"id": pa.array(sorted(set(image_ids)), pa.string())}))
        images = con.sql("SELECT id, dataset, path, width, height FROM images WHERE id IN "
                         "(SELECT id FROM _ids) ORDER BY id").to_arrow_table().to_pylist()
        regions = regions_for_images(con, [(i["id"], i["width"], i["height"]) for i in images],
                                     spec.max_regions, spec.grid)

    batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
    with ThreadPoolExecutor(DECODE_WORKERS) as pool:
        # On a GPU, decode the next batch while the device runs this one. On a CPU the model
        # already uses every core: decoding alongside it oversubscribes them and OpenMP's
        # spinning threads then slow the forward pass ~10x (measured on 2 cores), so decode
        # (in parallel) and compute take turns.
        overlap = backbone.device.type != "cpu"
        submit = lambda batch: [pool.submit(_decode, backbone, im) for im in batch]  # noqa: E731
        upcoming = submit(batches[0]) if batches else []
        for b, batch in enumerate(batches):
            decoded = [f.result() for f in upcoming]
            upcoming = submit(batches[b + 1]) if overlap and b + 1 < len(batches) else []
            _run_batch(backbone, rows, batch, decoded, regions, spec.grid)
            if not overlap and b + 1 < len(batches):
                upcoming = submit(batches[b + 1])
            if on_images:
                on_images(len(batch))

    counts = {"images": len(rows.image_ids), "regions": len(rows.regions["image_id"]),
              "rejected_images": len(set(rows.reject_images) - set(rows.image_ids)),
              "rejected": len(rows.rejects), "clipped_boxes": rows.clipped}
    published = _publish(wh, spec, rows, counts, {"batch_size": batch_size,
                                                  "device": str(backbone.device)}, base)
    counts["seconds"] = round(time.time() - started, 3)
    counts["images_per_s"] = round(counts["images"] / max(counts["seconds"], 1e-9), 2)
    return {"feature_set": spec.id, "build_id": build_id, **counts, **published}


def _run_batch(backbone: Backbone, rows: _ShardRows, batch: list[dict], decoded: list,
               regions: dict[str, ImageRegions], grid: int) -> None:
    pixels, boxes, kept = [], [], []
    for image, result in zip(batch, decoded):
        if isinstance(result, str):
            rows.reject(image, image["id"], result, {"image_id": image["id"],
                                                     "path": image["path"]})
            continue
        usable, clipped = _usable_regions(rows, image, regions[image["id"]], grid)
        pixels.append(result)
        boxes.append(torch.from_numpy(to_input_pixels(clipped, image["width"], image["height"],
                                                      backbone.image_size)))
        kept.append((image, usable, clipped))
    if not pixels:
        return
    region_vectors, global_vectors = encode_regions(backbone, torch.stack(pixels), boxes)
    rows.region_vectors.append(region_vectors.numpy())
    rows.image_vectors.append(global_vectors.numpy())
    for image, usable, clipped in kept:
        rows.image_ids.append(image["id"])
        rows.regions["image_id"] += [image["id"]] * len(usable)
        rows.regions["region_id"] += usable.region_ids
        rows.regions["box_source"] += usable.sources
        rows.regions["label"] += usable.labels
        rows.regions["score"] += usable.scores
        rows.boxes.append(clipped)
        rows.geometry.append(normalized_geometry(clipped, image["width"], image["height"]))


def _require_registered(con, wh: Warehouse, spec: FeatureSetSpec) -> None:
    rows = con.execute("SELECT count(*) FROM feature_sets WHERE id = ?", [spec.id]).fetchall()
    if not rows[0][0]:
        raise LookupError(f"feature set {spec.id} is not registered in {wh.root}: call "
                          "register_feature_set(warehouse, spec) before extracting")


def _publish(wh: Warehouse, spec: FeatureSetSpec, rows: _ShardRows, counts: dict,
             run_params: dict, base: Snapshot) -> dict:
    """Write the shard's parts and commit them. Images that another run published after `base`
    (where they were pending) are found in what it added and dropped, so no (feature set,
    region) row is ever doubled."""
    touched = set(rows.image_ids) | set(rows.reject_images)
    build = new_build("features", build_id=rows.build_id,
                      params={"feature_set": spec.id, "backbone": spec.backbone,
                              "pretrained": spec.pretrained, **run_params},
                      inputs={"images": len(touched)}, counts={})

    def published(snapshot: Snapshot) -> set[str]:
        # the feature set was registered at `base`, and rows are never taken back
        return touched & _published_since(wh, base, snapshot, spec)

    def rows_without(drop: frozenset) -> dict[str, pa.Table] | None:
        kept = touched - drop
        if not kept:
            return None
        tables = rows.tables(drop)
        build["counts"] = {**counts, "read": len(kept), "new": tables["image_features"].num_rows,
                           "rejected": tables["rejects"].num_rows,
                           "regions": tables["region_features"].num_rows}
        return tables

    snap, drop = publish_new_rows(wh, rows.build_id, rows_without, build, published)
    if snap is None:
        return {"published": False, "dropped_images": len(drop)}
    if drop:
        counts.update(images=build["counts"]["new"], regions=build["counts"]["regions"],
                      rejected=build["counts"]["rejected"])
    return {"published": True, "snapshot": snap.version, "dropped_images": len(drop)}


def extract_shard(warehouse: str | Warehouse, spec: FeatureSetSpec, image_ids: list[str],
                  batch_size: int | None = None, progress: bool = False,
                  base_version: int | None = None) -> dict:
    """Extract and publish one shard: region_features, image_features and rejects rows of those
    given images that the feature set still lacks (retried or overlapping shards redo nothing).
    With `base_version`, the version where `image_ids` were found pending, only what commits
    since then added is checked; otherwise the shard is checked against the whole feature set.
    Returns counts: images, regions, rejected (rows), rejected_images, clipped_boxes, seconds,
    images_per_s, published, snapshot.

    Each shard commits its own snapshot, so a run killed midway keeps every finished shard, and an
    image already in the feature set is never extracted twice (checked again at the commit).
    """
    wh = _warehouse(warehouse)
    if base_version is None:
        base = wh.current()
        todo = _pending(wh, base, spec, image_ids, None)
    else:
        base = wh.snapshot_at(base_version)
        todo = sorted(set(image_ids) - _published_since(wh, base, wh.current(), spec))
    bar = _progress_bar(len(todo), spec, progress)
    try:
        return _extract(wh, spec, todo, batch_size, bar.update if bar else None, base)
    finally:
        if bar:
            bar.close()


def _progress_bar(total: int, spec: FeatureSetSpec, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="img", desc=f"features {spec.id} ({spec.backbone})",
                smoothing=0.1)


def extract_features(warehouse: str | Warehouse, backbone: str = "ViT-B-32",
                     pretrained: str | None = None, max_regions: int = 50, grid: int = 4,
                     dtype: str = "float16", image_size: int | None = None,
                     shard_size: int | None = None, batch_size: int | None = None,
                     dataset: str | None = None, progress: bool = True,
                     max_images: int | None = None) -> dict:
    """Plan, register and extract every pending image (of `dataset`, of its fixed sample of
    `max_images`), shard by shard (no Prefect). The pending set is computed once; each shard
    (default: about COMMIT_BYTES of vectors) commits once, checked only against what other
    writers committed since."""
    started = time.time()
    spec = plan_feature_set(warehouse, backbone, pretrained, max_regions, grid, dtype,
                            image_size)
    register_feature_set(warehouse, spec)
    wh = _warehouse(warehouse)
    base = wh.current()
    pending = _pending(wh, base, spec, None, dataset, max_images)
    shard_size = shard_size or images_per_commit(spec)
    bar = _progress_bar(len(pending), spec, progress)
    total = {"feature_set": spec.id, "dim": spec.dim, "pending": len(pending), "shards": 0,
             "images": 0, "regions": 0, "rejected": 0, "rejected_images": 0,
             "clipped_boxes": 0}
    waiting = set(pending)
    try:
        while pending:
            shard, pending = pending[:shard_size], pending[shard_size:]
            waiting.difference_update(shard)
            result = _extract(wh, spec, shard, batch_size, bar.update if bar else None, base)
            # the next shard's checks start from here: what other writers published since the
            # last base leaves the pending set now, so no check reads this run's own history
            head = wh.current()
            if done := waiting & _published_since(wh, base, head, spec):
                waiting -= done
                pending = [i for i in pending if i not in done]
            base = head
            total["shards"] += 1
            for key in ("images", "regions", "rejected", "rejected_images", "clipped_boxes"):
                total[key] += result[key]
    finally:
        if bar:
            bar.close()
    total["seconds"] = round(time.time() - started, 3)
    total["images_per_s"] = round(total["images"] / max(total["seconds"], 1e-9), 2)
    return total
