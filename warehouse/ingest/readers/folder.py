"""A plain folder of images with a `captions.jsonl`, one JSON object per line:
    {"image": "cats/1.jpg", "caption": "a cat" | ["a cat", ...],
     "regions": [{"box": [x1, y1, x2, y2], "label": "cat"}, ...],   # optional; pixels
     "split": "train"}                                               # optional"""
from __future__ import annotations

from pathlib import Path

from warehouse.ingest.emitter import Emitter, stable_id
from warehouse.ingest.sources import (
    InputError,
    SourceContext,
    json_object,
    require_text_file,
    utf8_lines,
)

CAPTIONS_FILE = "captions.jsonl"


def _captions_file(ctx: SourceContext) -> Path:
    return ctx.source if ctx.source.suffix == ".jsonl" else ctx.source / CAPTIONS_FILE


def inputs(ctx: SourceContext) -> list[Path]:
    return [require_text_file(_captions_file(ctx))]


def read(ctx: SourceContext, emit: Emitter) -> None:
    """`--source` is the folder (or the .jsonl file itself); image paths are relative to
    `--image-root`, default the folder holding `captions.jsonl`. Images the file does not name are
    not ingested. An image named on several lines is ingested once, with every line's captions and
    regions (its split is the first line's). With `--split`, lines of another split are skipped and
    lines without a split get that one. Ids: image "folder:<relative path>", caption "folder:c:" +
    hash(path, text), region "folder:r:" + hash(path, box, label)."""
    path = _captions_file(ctx)
    name = path.name
    root = ctx.images_root().resolve()
    parsed = 0

    for ref, raw, line in utf8_lines(path, emit, "images"):
        rec = json_object(line, emit, name, ref, raw, "images")
        if rec is None:
            continue
        parsed += 1
        split = rec.get("split")
        if ctx.split is not None and split is not None and split != ctx.split:
            continue
        split = split if split is not None else ctx.split
        missing = [k for k in ("image", "caption") if k not in rec]
        if missing:
            emit.reject(name, ref, f"missing field {missing[0]!r}", raw, "images")
            continue
        regions = rec.get("regions") or []
        if not isinstance(regions, list):
            emit.reject(name, ref, "malformed field 'regions': not a list", raw, "images")
            continue
        found = emit.image_at(root, rec["image"], split, name, ref, raw)
        if found is None:
            continue
        iid, rel = found

        captions = rec["caption"]
        captions = captions if isinstance(captions, list) else [captions]
        for i, text in enumerate(captions):
            key = " ".join(text.split()) if isinstance(text, str) else text
            emit.caption("folder:c:" + stable_id(rel, key), iid, text, split, name,
                         f"{ref} caption[{i}]", raw)
        for i, region in enumerate(regions):
            box = region.get("box") if isinstance(region, dict) else None
            label = region.get("label") if isinstance(region, dict) else None
            emit.region("folder:r:" + stable_id(rel, box, label), iid, box, label, "annotation",
                        name, f"{ref} regions[{i}]", region)

    if parsed == 0:
        raise InputError(f"input file {path} has no readable line (expected one JSON object "
                         "per line)")
