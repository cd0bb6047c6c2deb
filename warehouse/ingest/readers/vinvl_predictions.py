"""VinVL detector predictions (`predictions.tsv`): rows `<image key>\\t<json>` with
`{"image_h", "image_w", "num_boxes", "objects": [{"class", "conf", "rect": [x1, y1, x2, y2]}]}`,
added as detector regions (score = conf, label = class) to images ALREADY in the warehouse."""
from __future__ import annotations

import re
from pathlib import Path

from warehouse.ingest.emitter import Emitter, stable_id
from warehouse.ingest.sources import (
    InputError,
    SourceContext,
    json_object,
    require_text_file,
    utf8_lines,
)

DEFAULT_NAMESPACE = "coco"
_COCO_STEM = re.compile(r"^COCO_[A-Za-z]+\d*_0*(\d+)$")


def image_id_for(key: str) -> str:
    """A full warehouse image id (it contains ":", e.g. "coco:391895", "folder:cats/1.jpg") as is;
    else a COCO image id, as in VinVL's own COCO/VG releases: "391895" and file stems
    ("COCO_val2014_000000391895") -> "coco:391895"."""
    if ":" in key:
        return key
    m = _COCO_STEM.match(key)
    return f"{DEFAULT_NAMESPACE}:{m.group(1) if m else key}"


def inputs(ctx: SourceContext) -> list[Path]:
    path = ctx.source
    if path.is_dir():
        path = path / "predictions.tsv"
    return [require_text_file(path)]


def read(ctx: SourceContext, emit: Emitter) -> None:
    """No image rows are written; regions whose image is not in the warehouse are rejected at
    merge time ("refers to an unknown or rejected image"). Region ids are "vinvl:r:" +
    hash(image id, rect, class)."""
    path = inputs(ctx)[0]
    name = path.name
    parsed = 0
    for ref, raw, line in utf8_lines(path, emit, "regions"):
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0].strip():
            emit.reject(name, ref, "malformed row", raw, "regions")
            continue
        rec = json_object(fields[1], emit, name, ref, raw, "regions")
        if rec is None:
            continue
        parsed += 1
        objects = rec.get("objects")
        if not isinstance(objects, list):
            emit.reject(name, ref, "missing field 'objects'", raw, "regions")
            continue
        iid = image_id_for(fields[0].strip())
        for i, obj in enumerate(objects):
            oref = f"{ref} objects[{i}]"
            if not isinstance(obj, dict):
                emit.reject(name, oref, "malformed object: not a JSON object", obj, "regions")
                continue
            rect, label, conf = obj.get("rect"), obj.get("class"), obj.get("conf")
            emit.region("vinvl:r:" + stable_id(iid, rect, label), iid, rect, label, "detector",
                        name, oref, obj, score=conf)
    if parsed == 0:
        raise InputError(f"input file {path} has no readable row (expected "
                         "'<image key>\\t<json>' per line)")
