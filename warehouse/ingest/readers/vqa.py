"""VQA v2 (and v1): a folder holding the official *_questions.json ({data_subtype, questions}) and
*_annotations.json ({data_subtype, annotations: [{question_id, image_id, answers, ...}]}; test
splits have none) files. Images are the COCO files COCO_<subtype>_<image id:012d>.jpg."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from warehouse.ingest.checks import shown
from warehouse.ingest.emitter import Emitter, image_id
from warehouse.ingest.json_stream import Elements, members_in_order, top_level_kind
from warehouse.ingest.sources import InputError, SourceContext, require_file


def _files(ctx: SourceContext) -> tuple[list[Path], list[Path]]:
    folder = ctx.source
    if not folder.is_dir():
        raise InputError(f"input folder not found: {folder} (vqa expects the folder holding "
                         "*_questions.json and *_annotations.json)")

    def pick(pattern: str) -> list[Path]:
        found = sorted(p for p in folder.glob(pattern) if p.is_file())
        if ctx.split is not None:
            found = [p for p in found if ctx.split in p.name]
        if any("OpenEnded" in p.name for p in found):  # VQA v1 ships the same questions twice
            found = [p for p in found if "MultipleChoice" not in p.name]
        return found

    questions = pick("*_questions.json")
    if not questions:
        which = f" matching split {ctx.split!r}" if ctx.split else ""
        raise InputError(f"input file not found: no *_questions.json{which} in {folder}")
    return questions, pick("*_annotations.json")


def inputs(ctx: SourceContext) -> list[Path]:
    questions, annotations = _files(ctx)
    return [require_file(p) for p in questions + annotations]


def _is_id(value) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool) and str(value) != ""


def _load(path: Path, key: str) -> tuple[str | None, Iterator]:
    """The file's data_subtype and its `key` records, streamed (VQA v2's train annotations are
    ~330 MB); the rest of the file is checked once the records are read."""
    not_vqa = InputError(f"input file {path} is not a VQA file (no {key!r} list)")
    if top_level_kind(path) is not dict:
        raise not_vqa
    members = members_in_order(path, ["data_subtype", key])
    subtype, records = next(members)[1], next(members)[1]
    if not isinstance(records, Elements):
        raise not_vqa

    def records_then_rest():
        yield from records
        for _ in members:
            pass
    return (subtype if isinstance(subtype, str) and subtype else None), records_then_rest()


def _answers(ann: dict) -> dict[str, int] | None:
    answers = ann.get("answers")
    if not isinstance(answers, list):
        return None
    counts: dict[str, int] = {}
    for a in answers:
        text = a.get("answer") if isinstance(a, dict) else None
        if not isinstance(text, str):
            return None
        text = text.strip().lower()
        if text:
            counts[text] = counts.get(text, 0) + 1
    return counts


def _image_path(root: Path, subtype: str | None, iid) -> Path:
    folder = (subtype or "").replace("test-dev", "test")
    name = f"COCO_{folder}_{int(iid):012d}.jpg" if folder else f"{int(iid):012d}.jpg"
    for candidate in (root / name, root / folder / name):
        if candidate.is_file():
            return candidate
    return root / name


def read(ctx: SourceContext, emit: Emitter) -> None:
    """--split keeps the files whose name contains it (e.g. "val2014"). Answers are stored as
    {answer: how many annotators gave it}, normalised by strip + lower only. Where a subtype has
    annotations, a question without one is rejected ("question has no annotation") and an
    annotation without its question too ("annotation refers to an unknown question"); a subtype
    without annotations (test-dev) gives questions with no answers.

    Images are looked up in the images root (--image-root, else the source folder) and its
    <subtype>/ folder; test-dev2015 images are the test2015 ones. One image row per distinct image
    id: "vqa:<image id>"; questions "vqa:q:<id>". The stored split is the file's data_subtype (or
    --split when the file has none).
    """
    question_files, annotation_files = _files(ctx)
    root = ctx.images_root()

    # annotations, by question id
    annotations: dict = {}          # question id -> (annotation, file name, ref)
    annotated: set = set()          # subtypes that have annotations (None: unknown subtype)
    for path in annotation_files:
        subtype, records = _load(path, "annotations")
        annotated.add(subtype)
        for i, ann in enumerate(records):
            ref = f"{path.name}:annotations[{i}]"
            if not isinstance(ann, dict) or not _is_id(ann.get("question_id")):
                emit.reject(path.name, ref, "annotation has no question_id", ann, "questions")
            elif ann["question_id"] in annotations:
                emit.reject(path.name, ref, "duplicate annotation for a question", ann,
                            "questions")
            else:
                annotations[ann["question_id"]] = (ann, path.name, ref)

    seen_images: set = set()
    for path in question_files:
        subtype, records = _load(path, "questions")
        split = subtype or ctx.split
        has_annotations = bool(annotated) and (subtype in annotated or None in annotated
                                               or subtype is None)
        name = path.name
        for i, q in enumerate(records):
            ref = f"{name}:questions[{i}]"
            if not isinstance(q, dict) or not _is_id(q.get("question_id")):
                emit.reject(name, ref, "question has no question_id", q, "questions")
                continue
            iid = q.get("image_id")
            if not isinstance(iid, int) or isinstance(iid, bool):
                # ASCII digits only, and few: int() refuses other digits and very long ones
                if isinstance(iid, str) and iid.isascii() and iid.isdigit() and len(iid) <= 30:
                    iid = int(iid)
                else:
                    annotations.pop(q["question_id"], None)
                    emit.reject(name, ref, f"question has no valid image_id: {shown(iid)}", q,
                                "questions")
                    continue
            found = annotations.pop(q["question_id"], None)
            raw = dict(q)
            answers: dict[str, int] = {}
            if found is not None:
                ann = found[0]
                raw["annotation"] = ann
                other = ann.get("image_id")
                if other is not None and (not _is_id(other) or str(other) != str(iid)):
                    emit.reject(name, ref, f"annotation image_id {shown(other)} differs "
                                f"from the question's {iid!r}", raw, "questions")
                    continue
                answers = _answers(ann)
                if answers is None:
                    emit.reject(name, ref, "annotation answers are malformed", raw, "questions")
                    continue
            elif has_annotations:
                emit.reject(name, ref, "question has no annotation", q, "questions")
                continue
            if iid not in seen_images:
                seen_images.add(iid)
                emit.image(iid, _image_path(root, subtype, iid), split, name, ref,
                           {"image_id": iid, "data_subtype": subtype})
            emit.question(f"vqa:q:{q['question_id']}", image_id(ctx.dataset, iid),
                          q.get("question"), answers, split, name, ref, raw)

    for ann, name, ref in annotations.values():  # left over: no question claimed them
        emit.reject(name, ref, "annotation refers to an unknown question", ann, "questions")
