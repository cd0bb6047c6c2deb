"""A plain folder of images with a `captions.jsonl`, one JSON object per line:

    {"image": "cats/1.jpg", "caption": "a cat" | ["a cat", ...],
     "regions": [{"box": [x1, y1, x2, y2], "label": "cat"}, ...],   # optional
     "split": "train"}                                               # optional

`--source` is the folder (or the .jsonl file itself); image paths are relative to
`--image-root`, default the folder holding `captions.jsonl`. Images the file does not name are
not ingested. An image named on several lines is ingested once, with every line's captions and
regions (its split is the first line's). With `--split`, lines of another split are skipped and
lines without a split get that one.

Ids: image "folder:<relative path>", caption "folder:c:" + hash(path, text), region
"folder:r:" + hash(path, box, label); boxes are pixels, x1 y1 x2 y2.
"""
from __future__ import annotations

import json
from pathlib import Path

from warehouse.ingest.checks import BadRecord, resolve_under
from warehouse.ingest.emitter import Emitter, stable_id
from warehouse.ingest.sources import InputError, SourceContext, iter_lines, require_file

CAPTIONS_FILE = "captions.jsonl"


def _captions_file(ctx: SourceContext) -> Path:
    return ctx.source if ctx.source.suffix == ".jsonl" else ctx.source / CAPTIONS_FILE


def inputs(ctx: SourceContext) -> list[Path]:
    path = _captions_file(ctx)
    if path.is_dir():
        raise InputError(f"input file {path} is unreadable: it is a folder")
    require_file(path)
    with open(path, "rb") as f:
        if b"\x00" in f.read(1 << 16):
            raise InputError(f"input file {path} is not a text file (it contains binary data)")
    return [path]


def read(ctx: SourceContext, emit: Emitter) -> None:
    path = _captions_file(ctx)
    name = path.name
    root = ctx.images_root().resolve()
    images: dict[str, str] = {}     # relative path -> image id
    parsed = 0

    for number, raw in iter_lines(path):
        ref = f"line {number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            emit.reject(name, ref, "line is not valid UTF-8", raw, "images")
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            emit.reject(name, ref, f"malformed JSON line: {e}", raw, "images")
            continue
        if not isinstance(rec, dict):
            emit.reject(name, ref, "malformed JSON line: not an object", raw, "images")
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
        try:
            file = resolve_under(root, rec["image"])
        except BadRecord as e:
            emit.reject(name, ref, str(e), raw, "images")
            continue
        rel = file.relative_to(root).as_posix()
        iid = images.get(rel)
        if iid is None:
            iid = images[rel] = emit.image(rel, file, split, name, ref, raw)

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
