"""SNLI-VE (visual entailment): a folder holding the official snli_ve_{train,dev,test}.jsonl, one
JSON object per line with Flickr30K_ID (the image), sentence2 (the hypothesis), gold_label
(entailment | neutral | contradiction, or "-" where annotators did not agree) and pairID. Images
are the Flickr30k files <Flickr30K_ID>.jpg."""
from __future__ import annotations

from pathlib import Path

from warehouse.ingest.checks import shown
from warehouse.ingest.emitter import Emitter, image_id, stable_id
from warehouse.ingest.sources import (
    InputError,
    SourceContext,
    json_object,
    require_text_file,
    utf8_lines,
)
from warehouse.schemas import ENTAILMENT_LABELS

SPLITS = ("train", "dev", "test")
IMAGE_FOLDERS = ("", "flickr30k_images")  # where <id>.jpg is looked up, in the images root


def _files(ctx: SourceContext) -> list[Path]:
    folder = ctx.source
    if not folder.is_dir():
        raise InputError(f"input folder not found: {folder} (snli-ve expects the folder holding "
                         "snli_ve_{train,dev,test}.jsonl)")
    if ctx.split is not None and ctx.split not in SPLITS:
        raise InputError(f"snli-ve has splits {', '.join(SPLITS)}; got {ctx.split!r}")
    splits = [ctx.split] if ctx.split is not None else SPLITS
    found = [folder / f"snli_ve_{s}.jsonl" for s in splits
             if (folder / f"snli_ve_{s}.jsonl").exists()]
    if not found:
        names = ", ".join(f"snli_ve_{s}.jsonl" for s in splits)
        raise InputError(f"input file not found: none of {names} in {folder}")
    return found


def inputs(ctx: SourceContext) -> list[Path]:
    return [require_text_file(p) for p in _files(ctx)]


def _flickr_id(value) -> str | None:
    """The image's Flickr30k id as ASCII digits, or None when it is not one."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    # ASCII digits only, and few: other digits and very long ones are no Flickr id
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 30:
        return value
    return None


def _image_path(root: Path, flickr_id: str) -> Path:
    for folder in IMAGE_FOLDERS:
        candidate = root / folder / f"{flickr_id}.jpg"
        if candidate.is_file():
            return candidate
    return root / f"{flickr_id}.jpg"  # missing: the emitter rejects it


def read(ctx: SourceContext, emit: Emitter) -> None:
    """--split train|dev|test reads that file only. The stored split is the file's. Ids: images
    "snli-ve:<Flickr30K_ID>" (one row per distinct image, looked up in the images root and its
    flickr30k_images/ folder), entailment rows "snli-ve:<pairID>" (a hash of split, image and
    hypothesis where a line has no pairID). A line whose gold_label is "-" (no consensus) is
    rejected: it has no label to learn."""
    root = ctx.images_root()
    seen_images: set[str] = set()
    for path in _files(ctx):
        split = path.stem.removeprefix("snli_ve_")
        name = path.name
        parsed = 0
        for ref, raw, line in utf8_lines(path, emit, "entailment"):
            rec = json_object(line, emit, name, ref, raw, "entailment")
            if rec is None:
                continue
            parsed += 1
            flickr_id = _flickr_id(rec.get("Flickr30K_ID"))
            if flickr_id is None:
                emit.reject(name, ref, "line has no valid Flickr30K_ID: "
                            f"{shown(rec.get('Flickr30K_ID'))}", raw, "entailment")
                continue
            label = rec.get("gold_label")
            if label == "-":
                emit.reject(name, ref, "gold_label '-': the annotators did not agree", raw,
                            "entailment")
                continue
            pair = rec.get("pairID")
            if isinstance(pair, (int, str)) and not isinstance(pair, bool) and str(pair):
                eid = f"{ctx.dataset}:{pair}"
            else:
                eid = f"{ctx.dataset}:" + stable_id(split, flickr_id, rec.get("sentence2"))
            if flickr_id not in seen_images and label in ENTAILMENT_LABELS:
                seen_images.add(flickr_id)
                emit.image(flickr_id, _image_path(root, flickr_id), split, name, ref,
                           {"Flickr30K_ID": flickr_id})
            emit.entailment(eid, image_id(ctx.dataset, flickr_id), rec.get("sentence2"), label,
                            split, name, ref, raw)
        if parsed == 0:
            raise InputError(f"input file {path} has no readable line (expected one JSON object "
                             "per line)")
