"""RefCOCO, RefCOCO+ and RefCOCOg in the refer toolkit's layout: a folder (refcoco/, refcoco+/,
refcocog/) holding
    refs(<by>).p      a pickled list of refs {ref_id, ann_id, image_id, split, category_id,
                      sentences [{sent, raw, tokens, sent_id}]}; <by> is unc, google or umd
    instances.json    COCO instances: images [{id, file_name, width, height}], annotations
                      [{id, image_id, bbox [x, y, w, h], category_id}], categories [{id, name}]
The pickle is loaded with every class lookup refused (safe_pickle): data, never code."""
from __future__ import annotations

from pathlib import Path

from warehouse.ingest.checks import BadRecord, resolve_under, shown, xywh_to_xyxy
from warehouse.ingest.emitter import Emitter, image_id
from warehouse.ingest.json_stream import Elements, object_members, top_level_kind
from warehouse.ingest.safe_pickle import load_plain_pickle
from warehouse.ingest.sources import InputError, SourceContext, require_file

INSTANCES_FILE = "instances.json"
INSTANCE_LISTS = ("images", "annotations", "categories")
PREFERRED_REFS = "refs(unc).p"  # RefCOCO and RefCOCO+ ship it alone; RefCOCOg ships umd and google
IMAGE_FOLDERS = ("", "train2014")  # where a COCO file_name is looked up, in the images root


def _files(ctx: SourceContext) -> tuple[Path, Path]:
    """(refs file, instances file). --source is the folder, or one refs(*).p file in it (the
    way to choose between RefCOCOg's umd and google partitions)."""
    if ctx.source.is_file():
        return ctx.source, ctx.source.parent / INSTANCES_FILE
    folder = ctx.source
    if not folder.is_dir():
        raise InputError(f"input folder not found: {folder} ({ctx.dataset} expects the refer "
                         f"toolkit's folder holding refs(unc).p and {INSTANCES_FILE})")
    found = sorted(p for p in folder.glob("refs(*).p") if p.is_file())
    if (folder / PREFERRED_REFS).is_file():
        return folder / PREFERRED_REFS, folder / INSTANCES_FILE
    if len(found) == 1:
        return found[0], folder / INSTANCES_FILE
    if not found:
        raise InputError(f"input file not found: no refs(*).p in {folder}")
    raise InputError(f"several refs files in {folder} ({', '.join(p.name for p in found)}): "
                     "give the one to read as --source")


def inputs(ctx: SourceContext) -> list[Path]:
    return [require_file(p) for p in _files(ctx)]


def _is_id(value) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool) and str(value) != ""


def _instances(path: Path) -> tuple[dict, dict, dict]:
    """(images by id, annotations by image id as [(index, annotation)], category names by id),
    streamed from the file; annotations are kept without their polygons, which say nothing
    here."""
    images, by_image, categories = {}, {}, {}
    found = set()  # which of the three lists the file has
    if top_level_kind(path) is dict:
        for key, value in object_members(path):
            if key not in INSTANCE_LISTS or not isinstance(value, Elements):
                continue
            found.add(key)
            for i, record in enumerate(value):
                if not isinstance(record, dict):
                    continue
                if key == "images" and _is_id(record.get("id")):
                    images[record["id"]] = record
                elif key == "annotations" and _is_id(record.get("image_id")):
                    by_image.setdefault(record["image_id"], []).append(
                        (i, {k: v for k, v in record.items() if k != "segmentation"}))
                elif key == "categories" and _is_id(record.get("id")):
                    categories[record["id"]] = record.get("name")
    if found != set(INSTANCE_LISTS):
        raise InputError(f"input file {path} is not a COCO instances file (needs images, "
                         "annotations and categories lists)")
    return images, by_image, categories


def _image_path(root: Path, file_name) -> Path:
    """The image file in the images root or a folder of it (all of RefCOCO's images are COCO
    train2014 ones); BadRecord if the name escapes the root."""
    path = resolve_under(root, file_name)
    for folder in IMAGE_FOLDERS[1:]:
        candidate = resolve_under(root, f"{folder}/{file_name}")
        if not path.is_file() and candidate.is_file():
            return candidate
    return path  # missing: the emitter rejects it


def _emit_image(ctx: SourceContext, emit: Emitter, img: dict, split, annotations: list,
                categories: dict, names: tuple[str, str], ref: str) -> None:
    """The image of a ref and every annotated object on it: the candidate boxes a model picks
    the referred one from."""
    refs_name, instances_name = names
    try:
        path = _image_path(ctx.images_root(), img.get("file_name"))
    except BadRecord as e:
        emit.reject(refs_name, ref, str(e), img, "images")
        return
    emit.image(img["id"], path, split, refs_name, ref, img)
    iid = image_id(ctx.dataset, img["id"])
    for i, ann in annotations:
        aref = f"{instances_name}:annotations[{i}]"
        if not _is_id(ann.get("id")):
            emit.reject(instances_name, aref, "instance annotation has no id", ann, "regions")
            continue
        if not _is_id(ann.get("category_id")) or ann["category_id"] not in categories:
            emit.reject(instances_name, aref,
                        f"unknown category id {shown(ann.get('category_id'))}", ann, "regions")
            continue
        try:
            box = xywh_to_xyxy(ann.get("bbox"))
        except BadRecord as e:
            emit.reject(instances_name, aref, str(e), ann, "regions")
            continue
        emit.region(f"{ctx.dataset}:r:{ann['id']}", iid, box, categories[ann["category_id"]],
                    "annotation", instances_name, aref, ann)


def read(ctx: SourceContext, emit: Emitter) -> None:
    """The dataset name (refcoco, refcoco+ or refcocog) namespaces the ids: images
    "<dataset>:<coco image id>", regions "<dataset>:r:<annotation id>", referring rows
    "<dataset>:x:<sent_id>" pointing at the region of the ref's ann_id. Images are the COCO
    file_names in the images root (or its train2014/ folder); only images with at least one ref
    are ingested, each with all its annotations as regions. --split keeps the refs of that split
    (train, val, testA, testB, test); the stored split is the ref's."""
    refs_path, instances_path = _files(ctx)
    names = (refs_path.name, instances_path.name)
    images, annotations, categories = _instances(instances_path)
    ann_image = {ann["id"]: iid for iid, anns in annotations.items() for _, ann in anns
                 if _is_id(ann.get("id"))}
    refs = load_plain_pickle(refs_path)
    if not isinstance(refs, list):
        raise InputError(f"input file {refs_path} is not a refs file (top level is a "
                         f"{type(refs).__name__}, not a list)")
    name = refs_path.name
    seen_images: set = set()
    for i, r in enumerate(refs):
        ref = f"{name}:[{i}]"
        if not isinstance(r, dict) or not all(_is_id(r.get(k)) for k in ("ref_id", "ann_id",
                                                                          "image_id")):
            emit.reject(name, ref, "ref lacks ref_id, ann_id or image_id", r, "referring")
            continue
        if ctx.split is not None and r.get("split") != ctx.split:
            continue
        sentences = r.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            emit.reject(name, ref, "ref has no sentences", r, "referring")
            continue
        if r["ann_id"] not in ann_image:
            emit.reject(name, ref, f"ref refers to an unknown annotation {shown(r['ann_id'])}",
                        r, "referring")
            continue
        if ann_image[r["ann_id"]] != r["image_id"]:
            emit.reject(name, ref, f"ref's image_id {shown(r['image_id'])} differs from its "
                        f"annotation's {shown(ann_image[r['ann_id']])}", r, "referring")
            continue
        if r["image_id"] not in images:
            emit.reject(name, ref, f"ref refers to an unknown image {shown(r['image_id'])}", r,
                        "referring")
            continue
        if r["image_id"] not in seen_images:
            seen_images.add(r["image_id"])
            _emit_image(ctx, emit, images[r["image_id"]], r.get("split"),
                        annotations[r["image_id"]], categories, names, ref)
        iid = image_id(ctx.dataset, r["image_id"])
        for k, sent in enumerate(sentences):
            sref = f"{ref}.sentences[{k}]"
            if not isinstance(sent, dict) or not _is_id(sent.get("sent_id")):
                emit.reject(name, sref, "sentence has no sent_id", sent, "referring")
                continue
            emit.referring(f"{ctx.dataset}:x:{sent['sent_id']}", iid,
                           f"{ctx.dataset}:r:{r['ann_id']}", sent.get("sent"), r.get("split"),
                           name, sref, {"ref_id": r["ref_id"], "ann_id": r["ann_id"], **sent})
