"""easy-VQA (PyPI package `easy_vqa`): 64x64 PNGs of one coloured shape, 4,000 train and 1,000 test
images, ~48k questions with one answer each, from the installed package's
`easy_vqa/data/{train,test}/{questions.json,images/}` or a `--source` folder of that layout."""
from __future__ import annotations

import re
from pathlib import Path

from warehouse.ingest.emitter import Emitter, image_id, stable_id
from warehouse.ingest.sources import InputError, SourceContext, load_json

DATASET = "easy-vqa"
SPLITS = ("train", "test")
COLORS = frozenset({"red", "green", "blue", "black", "gray", "teal", "brown", "yellow"})
SHAPES = frozenset({"circle", "rectangle", "triangle"})
UNANIMOUS = 10   # annotators: the single answer counts as a full-agreement VQA answer


def data_root(ctx: SourceContext) -> Path:
    src = ctx.source
    if src is not None and src.is_dir() and any((src / s / "questions.json").is_file()
                                                for s in SPLITS):
        return src
    try:
        import easy_vqa
    except ImportError:
        raise InputError("easy-vqa data not found: install the `easy_vqa` package or give "
                         "--source a folder with train/ and test/ (questions.json, images/)"
                         ) from None
    return Path(easy_vqa.__file__).parent / "data"


def splits(ctx: SourceContext) -> tuple[str, ...]:
    if ctx.split is None:
        return SPLITS
    if ctx.split not in SPLITS:
        raise InputError(f"easy-vqa has splits {', '.join(SPLITS)}; got {ctx.split!r}")
    return (ctx.split,)


def inputs(ctx: SourceContext) -> list[Path]:
    root = data_root(ctx)
    paths = [root / s / "questions.json" for s in splits(ctx)]
    for p in paths:
        if not p.is_file():
            raise InputError(f"input file not found: {p}")
    return paths


def _facts(text: str, answer: str) -> tuple[set[str], set[str]]:
    """Colours and shapes that one (question, answer) establishes for its image."""
    words = re.findall(r"[a-z]+", text.lower())
    if answer in ("yes", "no"):
        negated = "not" in words or "no" in words
        if (answer == "yes") == negated:    # the named thing is absent: nothing to add
            return set(), set()
        named = set(words)
    elif answer in COLORS or answer in SHAPES:
        named = set(words) | {answer}
    else:
        return set(), set()
    return named & COLORS, named & SHAPES


def caption_for(colors: set[str], shapes: set[str]) -> str | None:
    color = next(iter(colors)) if len(colors) == 1 else None
    shape = next(iter(shapes)) if len(shapes) == 1 else None
    if color is None and shape is None:
        return None
    article = "an" if (color or shape)[0] in "aeiou" else "a"
    return f"{article} {color or ''} {shape or 'shape'}".replace("  ", " ")


def _image_files(folder: Path) -> dict[int, Path]:
    files = {}
    if folder.is_dir():
        for p in folder.iterdir():
            if p.suffix == ".png" and p.stem.isascii() and p.stem.isdigit():  # int() refuses other digits
                files[int(p.stem)] = p
    return files


def read(ctx: SourceContext, emit: Emitter) -> None:
    """`--split train|test` ingests one split. Images "easy-vqa:<split>/<n>" for
    `<split>/images/<n>.png`; questions.json rows `[text, answer, image n]` -> id "easy-vqa:q:" +
    hash(split, image id, text), answers {answer: 10} (one ground truth, scored as unanimous).

    One caption per image, "a <colour> <shape>" (id "easy-vqa:c:<split>/<n>"), from what its
    questions establish: colour/shape answers ("what color is the shape?" -> "red"), the colour or
    shape a question names ("what is the red shape?" -> "circle" gives both), and yes/no answers
    ("is there a circle?" -> yes; "is there not a red shape?" -> no). With one of the two known it
    is "a red shape" / "a circle"; with neither, or when questions contradict each other on both,
    there is no caption.
    """
    root = data_root(ctx)
    for split in splits(ctx):
        qfile = root / split / "questions.json"
        qname = f"{split}/questions.json"
        for n, path in sorted(_image_files(root / split / "images").items()):
            emit.image(f"{split}/{n}", path, split, f"{split}/images", f"{n}.png")

        questions = load_json(qfile)
        if not isinstance(questions, list):
            raise InputError(f"input file {qfile} is not a list of [question, answer, image]")
        facts: dict[object, tuple[set[str], set[str]]] = {}
        for i, q in enumerate(questions):
            ref = f"[{i}]"
            if (not isinstance(q, list) or len(q) != 3 or not isinstance(q[1], str)
                    or isinstance(q[2], (list, dict)) or q[2] is None):
                emit.reject(qname, ref, "malformed question record: expected [question, answer, "
                            "image id]", q, "questions")
                continue
            text, answer, n = q
            iid = image_id(DATASET, f"{split}/{n}")
            emit.question(f"{DATASET}:q:" + stable_id(split, iid, text), iid, text,
                          {answer: UNANIMOUS}, split, qname, ref, q)
            if isinstance(text, str):
                colors, shapes = facts.setdefault(n, (set(), set()))
                c, s = _facts(text, answer)
                colors |= c
                shapes |= s

        for n, (colors, shapes) in sorted(facts.items(), key=lambda kv: str(kv[0])):
            text = caption_for(colors, shapes)
            if text is not None:
                emit.caption(f"{DATASET}:c:{split}/{n}", image_id(DATASET, f"{split}/{n}"),
                             text, split, qname, f"questions of image {n}")
