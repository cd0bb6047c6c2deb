"""`shapes`: a deterministic generator of multi-object scenes (2-6 non-overlapping objects of a
shape, colour and size, with exact boxes; captions and questions about attributes and spatial
relations; entailment hypotheses and referring expressions whose labels and referents hold by
construction), the embedded default data set and the scaling workload of the benchmarks."""
from __future__ import annotations

import hashlib
import io
import os
import random
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from PIL import Image, ImageDraw

from warehouse.ingest.sources import split

IMAGE_SIZE = 128
SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {"red": (214, 39, 40), "green": (44, 160, 44), "blue": (31, 119, 180),
           "yellow": (235, 200, 30), "purple": (148, 103, 189), "orange": (255, 127, 14)}
SIZES = {"small": (14, 22), "large": (28, 40)}  # side length range in pixels
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
CHUNK = 500
DEFAULT_N_IMAGES = 1000
GENERATOR_VERSION = 2   # bumped when a scene yields other rows: a rerun then adds them
# Entailment and referring rows draw from their own stream (seeded with this tag), so adding them
# left every image, region, caption and question of a seed as it was
LABELS_STREAM = "entailment+referring"


def scene(seed: int, index: int) -> dict:
    """Objects, split and background of scene `index`: pure function of (seed, index), so chunks
    render in parallel processes and any subset can be regenerated identically."""
    rng = random.Random(seed * 1_000_003 + index)
    objects = []
    target = rng.randint(2, 6)
    attempts = 0
    while len(objects) < target and attempts < 200:
        attempts += 1
        size = rng.choice(tuple(SIZES))
        side = rng.randint(*SIZES[size])
        x1, y1 = rng.randint(2, IMAGE_SIZE - side - 2), rng.randint(2, IMAGE_SIZE - side - 2)
        box = (x1, y1, x1 + side, y1 + side)
        if any(_overlap(box, o["box"]) for o in objects):
            continue
        objects.append({"shape": rng.choice(SHAPES), "colour": rng.choice(tuple(COLOURS)),
                        "size": size, "box": box})
    u = rng.random()
    split = "train" if u < 0.9 else "val" if u < 0.95 else "test"
    background = tuple(rng.randint(225, 250) for _ in range(3))
    return {"objects": objects, "split": split, "background": background, "rng": rng}


def _overlap(a, b, margin=2) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or
                a[3] + margin <= b[1] or b[3] + margin <= a[1])


def render(objects: list[dict], background) -> bytes:
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    draw = ImageDraw.Draw(img)
    for o in objects:
        x1, y1, x2, y2 = o["box"]
        fill = COLOURS[o["colour"]]
        # the drawn pixels span [x1, x2 - 1]: the stored box [x1, x2) is exact
        if o["shape"] == "circle":
            draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=fill)
        elif o["shape"] == "square":
            draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=fill)
        elif o["shape"] == "triangle":
            draw.polygon([((x1 + x2 - 1) / 2, y1), (x1, y2 - 1), (x2 - 1, y2 - 1)], fill=fill)
        else:
            cx, cy = (x1 + x2 - 1) / 2, (y1 + y2 - 1) / 2
            draw.polygon([(cx, y1), (x2 - 1, cy), (cx, y2 - 1), (x1, cy)], fill=fill)
    out = io.BytesIO()
    img.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def describe(o: dict) -> str:
    return f"{o['size']} {o['colour']} {o['shape']}"


def relation(a: dict, b: dict) -> str:
    """Where a is relative to b, along the axis where their centres differ most."""
    ax, ay = (a["box"][0] + a["box"][2]) / 2, (a["box"][1] + a["box"][3]) / 2
    bx, by = (b["box"][0] + b["box"][2]) / 2, (b["box"][1] + b["box"][3]) / 2
    if abs(ax - bx) >= abs(ay - by):
        return "left of" if ax < bx else "right of"
    return "above" if ay < by else "below"


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def captions(objects: list[dict], rng: random.Random) -> list[str]:
    a, b = rng.sample(objects, 2)
    out = [f"{_article(describe(a))} {relation(a, b)} {_article(describe(b))}"]
    if len(objects) >= 3:
        c, d = rng.sample([o for o in objects if o is not a], 2)
    else:
        c, d = b, a
    out.append(f"{_article(c['colour'] + ' ' + c['shape'])} {relation(c, d)} "
               f"{_article(d['colour'] + ' ' + d['shape'])}")
    items = [_article(describe(o)) for o in objects]
    out.append(f"{NUMBER_WORDS[len(objects)]} shapes: " + ", ".join(items[:-1])
               + " and " + items[-1])
    return out


def questions(objects: list[dict], rng: random.Random) -> list[tuple[str, str]]:
    qs = []
    by_size_shape = {}
    for o in objects:
        by_size_shape.setdefault((o["size"], o["shape"]), []).append(o)
    unique = [v[0] for v in by_size_shape.values() if len(v) == 1]
    if unique:
        o = rng.choice(unique)
        qs.append((f"what color is the {o['size']} {o['shape']}?", o["colour"]))
    shape = rng.choice(SHAPES)
    qs.append((f"how many {shape}s are there?",
               str(sum(o["shape"] == shape for o in objects))))
    colour, shape = rng.choice(tuple(COLOURS)), rng.choice(SHAPES)
    if rng.random() < 0.5:
        o = rng.choice(objects)
        colour, shape = o["colour"], o["shape"]
    present = any(o["colour"] == colour and o["shape"] == shape for o in objects)
    qs.append((f"is there a {colour} {shape}?", "yes" if present else "no"))
    by_colour_shape = {}
    for o in objects:
        by_colour_shape.setdefault((o["colour"], o["shape"]), []).append(o)
    distinct = [v[0] for v in by_colour_shape.values() if len(v) == 1]
    if len(distinct) >= 2:
        a, b = rng.sample(distinct, 2)
        qs.append((f"what shape is {relation(a, b)} the {b['colour']} {b['shape']}?",
                   a["shape"]))
    return qs


def labels_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"{LABELS_STREAM}:{seed}:{index}")  # str seeds are hashed, not salted


def _groups(objects: list[dict], *attrs: str) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for o in objects:
        out.setdefault(tuple(o[a] for a in attrs), []).append(o)
    return out


def _named(o: dict) -> str:
    return f"{o['colour']} {o['shape']}"


def entailment(objects: list[dict], rng: random.Random) -> list[tuple[str, str]]:
    """One (hypothesis, label) per label, in ENTAILMENT_LABELS order. Relations are stated only
    between objects unique by colour and shape (so "a red circle" names one object); a scene
    without two such objects gets the existence forms."""
    unique = [g[0] for g in _groups(objects, "colour", "shape").values() if len(g) == 1]
    relational = len(unique) >= 2
    if relational and rng.random() < 0.5:
        a, b = rng.sample(unique, 2)
        entailed = f"{_article(_named(a))} is {relation(a, b)} {_article(_named(b))}"
    else:
        entailed = f"there is {_article(_named(rng.choice(objects)))}"
    if relational and rng.random() < 0.5:
        a, b = rng.sample(unique, 2)  # b is not where a is relative to it: the sides swapped
        contradicted = f"{_article(_named(b))} is {relation(a, b)} {_article(_named(a))}"
    else:
        present = {(o["colour"], o["shape"]) for o in objects}
        colour, shape = rng.choice([(c, s) for c in COLOURS for s in SHAPES
                                    if (c, s) not in present])
        contradicted = f"there is {_article(colour + ' ' + shape)}"
    # objects never overlap, so nothing visible says whether anything is behind another
    occluder = rng.choice(unique or objects)
    behind = f"the {_named(occluder)}" if unique else _article(_named(occluder))
    hidden = f"{rng.choice(tuple(COLOURS))} {rng.choice(SHAPES)}"
    neutral = f"{_article(hidden)} is hidden behind {behind}"
    return [(entailed, "entailment"), (neutral, "neutral"), (contradicted, "contradiction")]


def _referring_expression(objects: list[dict], o: dict) -> str | None:
    """The shortest description that singles out `o`: colour and shape, plus size, plus where it
    is relative to an object unique by colour and shape; None when none does."""
    same = _groups(objects, "colour", "shape")[(o["colour"], o["shape"])]
    if len(same) == 1:
        return f"the {_named(o)}"
    same = [p for p in same if p["size"] == o["size"]]
    if len(same) == 1:
        return f"the {describe(o)}"
    for ref in objects:
        if len(_groups(objects, "colour", "shape")[(ref["colour"], ref["shape"])]) != 1:
            continue
        rel = relation(o, ref)
        if [p for p in same if relation(p, ref) == rel] == [o]:
            return f"the {describe(o)} {rel} the {_named(ref)}"
    return None


def referring(objects: list[dict], rng: random.Random) -> list[tuple[str, int]]:
    """1-2 (expression, index of the object it singles out), on distinct objects."""
    wanted = rng.randint(1, 2)
    out = []
    for k in rng.sample(range(len(objects)), len(objects)):
        expression = _referring_expression(objects, objects[k])
        if expression is not None:
            out.append((expression, k))
            if len(out) == wanted:
                break
    return out


def render_chunk(seed: int, start: int, stop: int, folder: str, split: str | None) -> dict:
    """Render scenes [start, stop) to PNG files and return their rows column-wise."""
    rows = {t: {} for t in ("images", "regions", "captions", "questions", "entailment",
                            "referring")}

    def add(table, **cols):
        for k, v in cols.items():
            rows[table].setdefault(k, []).append(v)

    for i in range(start, stop):
        s = scene(seed, i)
        key = f"{seed}-{i:07d}"
        iid = f"shapes:{key}"
        data = render(s["objects"], s["background"])
        path = Path(folder) / f"{i // 1000:04d}" / f"{i:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".png.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        img_split = split or s["split"]
        add("images", id=iid, source_id=key, split=img_split, path=str(path),
            width=IMAGE_SIZE, height=IMAGE_SIZE, sha256=hashlib.sha256(data).hexdigest(),
            _record_ref=f"scene {i}")
        for k, o in enumerate(s["objects"]):
            x1, y1, x2, y2 = o["box"]
            add("regions", region_id=f"shapes:r:{key}-{k}", image_id=iid, x1=float(x1),
                y1=float(y1), x2=float(x2), y2=float(y2), label=o["shape"],
                attributes=[o["size"], o["colour"]], source="annotation", score=None,
                _record_ref=f"scene {i} object {k}")
        for k, text in enumerate(captions(s["objects"], s["rng"])):
            add("captions", id=f"shapes:c:{key}-{k}", image_id=iid, text=text,
                split=img_split, box=None, _record_ref=f"scene {i} caption {k}")
        for k, (q, a) in enumerate(questions(s["objects"], s["rng"])):
            add("questions", id=f"shapes:q:{key}-{k}", image_id=iid, question=q,
                answers=[{"answer": a, "count": 10}], split=img_split,
                _record_ref=f"scene {i} question {k}")
        rng = labels_rng(seed, i)
        for k, (text, label) in enumerate(entailment(s["objects"], rng)):
            add("entailment", id=f"shapes:e:{key}-{k}", image_id=iid, hypothesis=text,
                label=label, split=img_split, _record_ref=f"scene {i} hypothesis {k}")
        for k, (text, target) in enumerate(referring(s["objects"], rng)):
            add("referring", id=f"shapes:x:{key}-{k}", image_id=iid,
                region_id=f"shapes:r:{key}-{target}", expression=text, split=img_split,
                _record_ref=f"scene {i} expression {k}")
    return rows


def inputs(ctx) -> list[Path]:
    return []  # generated: the build is defined by (n_images, seed, code version)


def partitions(ctx, n: int) -> list:
    """n builds of contiguous scene ranges: scene ids never cross a range, so they never meet."""
    return split(ctx, n)


def _scenes(ctx) -> range:
    n = ctx.n_images if ctx.n_images is not None else DEFAULT_N_IMAGES
    return ctx.partition.span(n) if ctx.partition is not None else range(n)


def read(ctx, emit) -> None:
    scenes = _scenes(ctx)
    folder = str(ctx.source)
    chunks = [(ctx.seed, start, min(start + CHUNK, scenes.stop), folder, ctx.split)
              for start in range(scenes.start, scenes.stop, CHUNK)]
    source_file = f"shapes(seed={ctx.seed})"
    if ctx.workers <= 1 or len(chunks) <= 1:
        results = (render_chunk(*c) for c in chunks)
        _emit_all(results, emit, source_file)
        return
    # fork: workers only run render_chunk (no locks, logging or imports), and unlike spawn it
    # does not re-import the caller's __main__ (an unguarded user script would recurse)
    with ProcessPoolExecutor(ctx.workers, mp_context=get_context("fork")) as pool:
        window = 2 * ctx.workers  # bounded look-ahead keeps memory flat for any n
        futures = [pool.submit(render_chunk, *c) for c in chunks[:window]]
        next_chunk = window

        def results():
            nonlocal next_chunk
            while futures:
                rows = futures.pop(0).result()
                if next_chunk < len(chunks):
                    futures.append(pool.submit(render_chunk, *chunks[next_chunk]))
                    next_chunk += 1
                yield rows
        _emit_all(results(), emit, source_file)


def _emit_all(results, emit, source_file: str) -> None:
    for rows in results:
        for table, cols in rows.items():
            if cols:
                emit.rows(table, cols, source_file)
