"""COCO captions (required) and instances (optional), under <root>:
    annotations/captions_<split>.json    images[{id, file_name}] + annotations[{id, image_id, caption}]
    annotations/instances_<split>.json   annotations[{id, image_id, category_id, bbox [x, y, w, h],
                                         iscrowd}] + categories[{id, name}]
    <split>/<file_name>                  the images (or --image-root/<file_name>)"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from warehouse.ingest.checks import BadRecord, resolve_under, shown, xywh_to_xyxy
from warehouse.ingest.emitter import Emitter, image_id
from warehouse.ingest.json_stream import Elements, members_in_order, top_level_kind
from warehouse.ingest.sources import InputError, SourceContext, require_file


def _files(ctx: SourceContext) -> tuple[Path, Path]:
    if not ctx.split:
        raise InputError("coco needs --split (e.g. --split val2017): it selects "
                         "annotations/captions_<split>.json and the <split>/ image folder")
    ann = ctx.source / "annotations"
    return ann / f"captions_{ctx.split}.json", ann / f"instances_{ctx.split}.json"


def inputs(ctx: SourceContext) -> list[Path]:
    captions, instances = _files(ctx)
    files = [require_file(captions)]
    if instances.exists():
        files.append(require_file(instances))
    return files


def _is_id(value) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool) and str(value) != ""


def _has_ids(ann) -> bool:
    return isinstance(ann, dict) and _is_id(ann.get("id")) and _is_id(ann.get("image_id"))


def _listed(value, path: Path, key: str, required: bool = True) -> Iterable:
    """The streamed records of the `key` list; a missing key is an empty list unless required."""
    if value is None and not required:
        return []
    if not isinstance(value, Elements):
        raise InputError(f"input file {path} is not a COCO annotation file (no {key!r} list)")
    return value


def _in_order(path: Path, keys: list[str]):
    """(key, value) of the file's `keys` in that order, lists streamed (instances_train2017.json
    is ~450 MB)."""
    if top_level_kind(path) is not dict:
        raise InputError(f"input file {path} is not a COCO annotation file (top level is not an "
                         "object)")
    return members_in_order(path, keys)


def _emit_images(ctx: SourceContext, emit: Emitter, images: Iterable, name: str, seen: set
                 ) -> None:
    base = ctx.image_root if ctx.image_root is not None else ctx.source / ctx.split
    for i, img in enumerate(images):
        ref = f"{name}:images[{i}]"
        if not isinstance(img, dict) or not _is_id(img.get("id")):
            emit.reject(name, ref, "image record has no id", img, "images")
            continue
        if img["id"] in seen:  # instances_* repeats the images of captions_*
            continue
        seen.add(img["id"])
        try:
            path = resolve_under(base, img.get("file_name"))
        except BadRecord as e:
            emit.reject(name, ref, str(e), img, "images")
            continue
        emit.image(img["id"], path, ctx.split, name, ref, img)


def _emit_captions(ctx: SourceContext, emit: Emitter, annotations: Iterable, name: str
                   ) -> None:
    for i, ann in enumerate(annotations):
        ref = f"{name}:annotations[{i}]"
        if not _has_ids(ann):
            emit.reject(name, ref, "caption annotation lacks id or image_id", ann, "captions")
            continue
        emit.caption(f"coco:c:{ann['id']}", image_id(ctx.dataset, ann["image_id"]),
                     ann.get("caption"), ctx.split, name, ref, ann)


def _emit_regions(ctx: SourceContext, emit: Emitter, annotations: Iterable, categories: dict,
                  name: str) -> None:
    for i, ann in enumerate(annotations):
        ref = f"{name}:annotations[{i}]"
        raw = ({k: v for k, v in ann.items() if k != "segmentation"}
               if isinstance(ann, dict) else ann)  # polygons are long and say nothing here
        if not _has_ids(ann):
            emit.reject(name, ref, "instance annotation lacks id or image_id", raw, "regions")
            continue
        if not _is_id(ann.get("category_id")) or ann["category_id"] not in categories:
            emit.reject(name, ref, f"unknown category id {shown(ann.get('category_id'))}", raw,
                        "regions")
            continue
        try:
            box = xywh_to_xyxy(ann.get("bbox"))
        except BadRecord as e:
            emit.reject(name, ref, str(e), raw, "regions")
            continue
        emit.region(f"coco:r:{ann['id']}", image_id(ctx.dataset, ann["image_id"]), box,
                    categories[ann["category_id"]], "annotation", name, ref, raw)


def read(ctx: SourceContext, emit: Emitter) -> None:
    """Ids: images "coco:<image id>", captions "coco:c:<annotation id>", regions
    "coco:r:<annotation id>". Crowd boxes (iscrowd=1) are kept like any other box. Each file's
    images are emitted before its annotations, and an instance's category must be known before
    it: lists met in another order are streamed in a second pass."""
    captions_path, instances_path = _files(ctx)
    seen_images: set = set()

    name = captions_path.name
    for key, value in _in_order(captions_path, ["images", "annotations"]):
        records = _listed(value, captions_path, key)
        if key == "images":
            _emit_images(ctx, emit, records, name, seen_images)
        else:
            _emit_captions(ctx, emit, records, name)

    if not instances_path.exists():
        return
    name = instances_path.name
    categories = {}
    for key, value in _in_order(instances_path, ["images", "categories", "annotations"]):
        records = _listed(value, instances_path, key, required=key == "annotations")
        if key == "images":
            _emit_images(ctx, emit, records, name, seen_images)
        elif key == "categories":
            categories = {c["id"]: c.get("name") for c in records
                          if isinstance(c, dict) and _is_id(c.get("id"))}
        else:
            _emit_regions(ctx, emit, records, categories, name)
