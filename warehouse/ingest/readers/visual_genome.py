"""Visual Genome: a folder holding the official JSON files image_data.json and objects.json
(required), attributes.json, relationships.json and region_descriptions.json (optional). Images
are <images root>/<basename of url>, also looked up in VG_100K/ and VG_100K_2/ under it."""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator
from urllib.parse import urlparse

from warehouse.ingest.checks import BadRecord, resolve_under, xywh_to_xyxy
from warehouse.ingest.emitter import Emitter, image_id
from warehouse.ingest.json_stream import array_elements, top_level_kind
from warehouse.ingest.sources import InputError, SourceContext, require_file

REQUIRED = ("image_data.json", "objects.json")
OPTIONAL = ("attributes.json", "relationships.json", "region_descriptions.json")
IMAGE_FOLDERS = ("", "VG_100K", "VG_100K_2")
TABLE_OF = {"objects": "regions", "attributes": "regions", "relationships": "relations",
            "regions": "captions"}


def _folder(ctx: SourceContext) -> Path:
    if not ctx.source.is_dir():
        raise InputError(f"input folder not found: {ctx.source} (vg expects the folder holding "
                         f"{', '.join(REQUIRED + OPTIONAL)})")
    return ctx.source


def inputs(ctx: SourceContext) -> list[Path]:
    folder = _folder(ctx)
    files = [require_file(folder / name) for name in REQUIRED]
    return files + [require_file(folder / name) for name in OPTIONAL if (folder / name).exists()]


def _is_id(value) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool) and str(value) != ""


def _first_id(record: dict, *keys):
    for key in keys:
        if _is_id(record.get(key)):
            return record[key]
    return None


def _entries(folder: Path, name: str) -> Iterator:
    """The file's per-image entries, streamed: objects.json is ~400 MB."""
    if top_level_kind(folder / name) is not list:
        raise InputError(f"input file {folder / name} is not a Visual Genome file (top level is "
                         "not a list)")
    return array_elements(folder / name)


def _per_image(emit: Emitter, name: str, entries: Iterable, key: str,
               id_keys=("image_id", "id")):
    """(image id, [(record, ref)]) for each image entry of a per-image file; bad entries are
    rejected."""
    for i, entry in enumerate(entries):
        ref = f"{name}:[{i}]"
        items = entry.get(key) if isinstance(entry, dict) else None
        iid = _first_id(entry, *id_keys) if isinstance(entry, dict) else None
        if iid is None or not isinstance(items, list):
            emit.reject(name, ref, f"entry lacks an image id or a {key!r} list", entry,
                        TABLE_OF[key])
            continue
        yield iid, [(item, f"{ref}.{key}[{j}]") for j, item in enumerate(items)]


def _image_path(root: Path, entry: dict, iid) -> Path:
    url = entry.get("url")
    base = PurePosixPath(urlparse(url).path).name if isinstance(url, str) else ""
    base = base or f"{iid}.jpg"
    candidates = [resolve_under(root, str(PurePosixPath(sub) / base) if sub else base)
                  for sub in IMAGE_FOLDERS]
    return next((c for c in candidates if c.is_file()), candidates[0])


def _label(obj: dict) -> str | None:
    names = obj.get("names")
    if isinstance(names, list) and names and isinstance(names[0], str) and names[0].strip():
        return names[0]
    name = obj.get("name")
    return name if isinstance(name, str) and name.strip() else None


def read(ctx: SourceContext, emit: Emitter) -> None:
    """The images root is --image-root, else the source folder; image_data's id is `image_id`
    (v1.0: `id`). Ids: images "vg:<image id>"; regions "vg:r:<object id>" (objects, label =
    names[0], attributes joined by object_id); relations "vg:rel:<relationship id>" between
    "vg:r:<subject object id>" and "vg:r:<object object id>" (an end that is not an object of
    objects.json makes the merge reject the relation); region descriptions become captions
    "vg:d:<region id>" with their box. VG has no splits: the stored split is --split or null."""
    folder = _folder(ctx)
    root = ctx.images_root()

    name = "image_data.json"
    for i, entry in enumerate(_entries(folder, name)):
        ref = f"{name}:[{i}]"
        iid = _first_id(entry, "image_id", "id") if isinstance(entry, dict) else None
        if iid is None:
            emit.reject(name, ref, "image record has no image_id", entry, "images")
            continue
        try:
            path = _image_path(root, entry, iid)
        except BadRecord as e:
            emit.reject(name, ref, str(e), entry, "images")
            continue
        emit.image(iid, path, ctx.split, name, ref, entry)

    attributes: dict = {}  # object id -> attributes, normalised
    if (folder / "attributes.json").exists():
        for _, objs in _per_image(emit, "attributes.json", _entries(folder, "attributes.json"),
                                  "attributes"):
            for obj, _ in objs:
                oid = _first_id(obj, "object_id", "id") if isinstance(obj, dict) else None
                values = obj.get("attributes") if oid is not None else None
                if not isinstance(values, list):
                    continue
                clean = attributes.setdefault(oid, [])
                for v in values:
                    v = " ".join(v.split()).lower() if isinstance(v, str) else ""
                    if v and v not in clean:
                        clean.append(v)

    name = "objects.json"
    for iid, objs in _per_image(emit, name, _entries(folder, name), "objects"):
        for obj, ref in objs:
            oid = _first_id(obj, "object_id", "id") if isinstance(obj, dict) else None
            if oid is None:
                emit.reject(name, ref, "object has no object_id", obj, "regions")
                continue
            try:
                box = xywh_to_xyxy([obj.get(k) for k in ("x", "y", "w", "h")])
            except BadRecord as e:
                emit.reject(name, ref, str(e), obj, "regions")
                continue
            emit.region(f"vg:r:{oid}", image_id(ctx.dataset, iid), box, _label(obj),
                        "annotation", name, ref, obj, attributes=attributes.get(oid) or None)
    attributes.clear()

    name = "relationships.json"
    if (folder / name).exists():
        for iid, rels in _per_image(emit, name, _entries(folder, name), "relationships"):
            for rel, ref in rels:
                rid = _first_id(rel, "relationship_id", "id") if isinstance(rel, dict) else None
                ends = [rel.get(k) if rid is not None else None for k in ("subject", "object")]
                ends = [_first_id(e, "object_id", "id") if isinstance(e, dict) else None
                        for e in ends]
                if rid is None or None in ends:
                    emit.reject(name, ref, "relationship lacks relationship_id or a subject/"
                                "object with an object_id", rel, "relations")
                    continue
                emit.relation(f"vg:rel:{rid}", image_id(ctx.dataset, iid), f"vg:r:{ends[0]}",
                              rel.get("predicate"), f"vg:r:{ends[1]}", name, ref, rel)

    name = "region_descriptions.json"
    if (folder / name).exists():
        for iid, regions in _per_image(emit, name, _entries(folder, name), "regions",
                                       ("id", "image_id")):
            for reg, ref in regions:
                rid = _first_id(reg, "region_id", "id") if isinstance(reg, dict) else None
                if rid is None:
                    emit.reject(name, ref, "region description has no region_id", reg,
                                "captions")
                    continue
                try:
                    box = xywh_to_xyxy([reg.get(k) for k in ("x", "y", "width", "height")])
                except BadRecord as e:
                    emit.reject(name, ref, str(e), reg, "captions")
                    continue
                owner = _first_id(reg, "image_id")
                emit.caption(f"vg:d:{rid}", image_id(ctx.dataset, owner if owner is not None
                                                     else iid),
                             reg.get("phrase"), ctx.split, name, ref, reg, box=box)
