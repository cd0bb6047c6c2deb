"""Karpathy splits of COCO / Flickr30K / Flickr8K (`dataset_{coco,flickr30k,flickr8k}.json`):
    {"dataset": "coco" | "flickr30k" | "flickr8k",
     "images": [{"filepath"?: "val2014", "filename", "imgid", "cocoid"?, "split": "train|val|test|restval",
                 "sentids": [...], "sentences": [{"raw", "tokens", "sentid", "imgid"}]}]}"""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Iterable

from warehouse.ingest.checks import BadRecord, resolve_under
from warehouse.ingest.emitter import Emitter
from warehouse.ingest.json_stream import Elements, members_in_order, top_level_kind
from warehouse.ingest.sources import InputError, SourceContext, require_file


def _file(ctx: SourceContext) -> Path:
    if ctx.source.is_dir():
        found = sorted(ctx.source.glob("dataset_*.json"))
        if len(found) != 1:
            raise InputError(f"input file not found: expected one dataset_*.json in {ctx.source}"
                             f" (found {len(found)}); point --source at the file")
        return found[0]
    return ctx.source


def inputs(ctx: SourceContext) -> list[Path]:
    return [require_file(_file(ctx))]


def _is_id(value) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool) and str(value) != ""


def _source_id(img: dict) -> str | None:
    if _is_id(img.get("cocoid")):
        return str(img["cocoid"])
    name = img.get("filename")
    if isinstance(name, str) and name.strip():
        return PurePosixPath(name.strip()).stem
    return None


def _emit_images(ctx: SourceContext, emit: Emitter, images: Iterable, ds: str, name: str
                 ) -> None:
    root = ctx.images_root()
    for i, img in enumerate(images):
        ref = f"{name}:images[{i}]"
        if not isinstance(img, dict):
            emit.reject(name, ref, "image record is not an object", img, "images")
            continue
        split = img.get("split")
        if ctx.split is not None and split != ctx.split:
            continue
        raw = {k: v for k, v in img.items() if k != "sentences"}
        source_id = _source_id(img)
        if source_id is None:
            emit.reject(name, ref, "image record has neither cocoid nor filename", raw, "images")
        else:
            filepath = img.get("filepath") or ""
            try:
                if not isinstance(filepath, str):
                    raise BadRecord(f"filepath is not a string: {type(filepath).__name__}")
                filename = img.get("filename")
                rel = (f"{filepath.rstrip('/')}/{filename}"
                       if filepath and isinstance(filename, str) else filename)
                file = resolve_under(root, rel)
            except BadRecord as e:
                emit.reject(name, ref, str(e), raw, "images")
            else:
                emit.image(f"{ds}:{source_id}", file, split, name, ref, raw)
        iid = f"{ctx.dataset}:{ds}:{source_id}"
        sentences = img.get("sentences") or []
        if not isinstance(sentences, list):
            emit.reject(name, f"{ref}.sentences", "sentences is not a list", sentences,
                        "captions")
            continue
        for j, s in enumerate(sentences):
            sref = f"{ref}.sentences[{j}]"
            if not isinstance(s, dict) or not _is_id(s.get("sentid")):
                emit.reject(name, sref, "sentence has no sentid", s, "captions")
                continue
            if source_id is None:  # its image was rejected above; the caption goes with it
                emit.reject(name, sref, "refers to an unknown or rejected image", s, "captions")
                continue
            emit.caption(f"{ctx.dataset}:c:{ds}:{s['sentid']}", iid, s.get("raw"), split, name,
                         sref, s)


def read(ctx: SourceContext, emit: Emitter) -> None:
    """The image file is <images root>/<filepath>/<filename> (no filepath for Flickr); the images
    root is --image-root, else the JSON file's folder. --split keeps one split ("restval" is a split
    of its own); the stored split is the image's own.

    Every Karpathy file restarts `imgid`/`sentid` at 0 and Flickr30K names collide with COCO ids
    (e.g. 36979), so ids carry the file's dataset name: images "karpathy:<dataset>:<cocoid or
    filename stem>" (e.g. "karpathy:flickr30k:1000092795"), captions "karpathy:c:<dataset>:<sentid>".
    """
    path = _file(ctx)
    not_karpathy = InputError(f"input file {path} is not a Karpathy split file (no 'images' "
                              "list)")
    if top_level_kind(path) is not dict:
        raise not_karpathy
    # the files name their dataset after the images, streamed in a second pass (~140 MB)
    for key, value in members_in_order(path, ["dataset", "images"]):
        if key == "dataset":
            ds = (value if isinstance(value, str) and value.strip()
                  else path.stem.removeprefix("dataset_")).strip()
        elif not isinstance(value, Elements):
            raise not_karpathy
        else:
            _emit_images(ctx, emit, value, ds, path.name)
