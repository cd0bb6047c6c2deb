"""The shapes generator: deterministic, exact boxes, captions and answers that match the pixels,
entailment labels and referents that hold."""
import hashlib
import json
import re
from collections import Counter

import numpy as np
from PIL import Image

from warehouse.ingest.build import ingest
from warehouse.ingest.readers import shapes
from warehouse.schemas import ENTAILMENT_LABELS


def test_same_seed_same_pixels_other_seed_other_pixels(tmp_path, query):
    a = ingest("shapes", tmp_path / "a", tmp_path / "wa", n_images=30, seed=7, workers=1)
    b = ingest("shapes", tmp_path / "b", tmp_path / "wb", n_images=30, seed=7, workers=2)
    c = ingest("shapes", tmp_path / "c", tmp_path / "wc", n_images=30, seed=8, workers=1)
    assert a.balanced and b.balanced and c.balanced
    sql = "SELECT source_id, sha256 FROM images ORDER BY source_id"
    ha = [h for _, h in query(tmp_path / "wa", sql)]
    assert ha == [h for _, h in query(tmp_path / "wb", sql)]  # parallelism changes nothing
    hc = [h for _, h in query(tmp_path / "wc", sql)]
    assert len(set(ha) & set(hc)) == 0


def test_boxes_are_exact_and_objects_do_not_overlap(tmp_path, query):
    ingest("shapes", tmp_path / "img", tmp_path / "wh", n_images=20, seed=1, workers=1)
    rows = query(tmp_path / "wh", """
        SELECT i.path, r.x1, r.y1, r.x2, r.y2, r.label, r.attributes FROM regions r
        JOIN images i ON i.id = r.image_id ORDER BY r.region_id""")
    assert len(rows) >= 40  # at least 2 objects per scene
    for path, x1, y1, x2, y2, label, attrs in rows:
        pixels = np.asarray(Image.open(path).convert("RGB"))
        size, colour = attrs
        centre = pixels[int((y1 + y2) / 2), int((x1 + x2) / 2)]
        assert tuple(centre) == shapes.COLOURS[colour], (path, label)
        lo, hi = shapes.SIZES[size]
        assert lo <= x2 - x1 <= hi and x2 - x1 == y2 - y1
        # the object's colour appears on every edge row/column of its box: the box is tight
        inside = np.all(pixels[int(y1):int(y2), int(x1):int(x2)] == shapes.COLOURS[colour], -1)
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        assert label in shapes.SHAPES


def test_captions_and_answers_agree_with_the_scene():
    for i in range(200):
        s = shapes.scene(3, i)
        objs = s["objects"]
        assert 2 <= len(objs) <= 6
        for a in objs:
            for b in objs:
                if a is not b:
                    assert not shapes._overlap(a["box"], b["box"], margin=0)
        caps = shapes.captions(objs, s["rng"])
        assert caps[2].startswith(shapes.NUMBER_WORDS[len(objs)] + " shapes: ")
        assert any(r in caps[0] for r in ("left of", "right of", "above", "below"))
        for q, answer in shapes.questions(objs, s["rng"]):
            if q.startswith("how many"):
                shape = q.split()[2][:-1]
                assert answer == str(sum(o["shape"] == shape for o in objs))
            if q.startswith("is there a"):
                colour, shape = q[len("is there a "):-1].split()
                present = any(o["colour"] == colour and o["shape"] == shape for o in objs)
                assert answer == ("yes" if present else "no")


def test_relation_reads_geometry():
    left = {"box": (0, 50, 10, 60)}
    right = {"box": (100, 52, 110, 62)}
    top = {"box": (50, 0, 60, 10)}
    assert shapes.relation(left, right) == "left of"
    assert shapes.relation(right, left) == "right of"
    assert shapes.relation(top, {"box": (52, 90, 62, 100)}) == "above"


def test_growing_n_appends_only_the_new_scenes(tmp_path, query):
    first = ingest("shapes", tmp_path / "img", tmp_path / "wh", n_images=40, seed=0, workers=1)
    again = ingest("shapes", tmp_path / "img", tmp_path / "wh", n_images=40, seed=0, workers=1)
    assert again.skipped and again.snapshot == first.snapshot
    more = ingest("shapes", tmp_path / "img", tmp_path / "wh", n_images=60, seed=0, workers=1)
    assert more.tables["images"]["new"] == 20 and more.tables["images"]["existing"] == 40
    assert more.balanced and more.snapshot == first.snapshot + 1
    assert query(tmp_path / "wh", "SELECT count(*), count(DISTINCT id) FROM images") == [(60, 60)]
    n_captions = query(tmp_path / "wh", "SELECT count(*) FROM captions")[0][0]
    assert n_captions == 60 * 3


def _digest(rows: dict, folder) -> str:
    text = json.dumps(rows, sort_keys=True).replace(str(folder), "X")
    return hashlib.sha256(text.encode()).hexdigest()


def test_entailment_and_referring_leave_the_other_tables_as_they_were(tmp_path):
    """Digests of render_chunk's tables from before entailment and referring rows existed."""
    rows = shapes.render_chunk(0, 0, 60, str(tmp_path), None)
    assert {t: _digest(rows[t], tmp_path) for t in ("images", "regions", "captions",
                                                   "questions")} == {
        "images": "815d3e0f2492a6272c017057c7582ca341a1d4c964611963105d16ad94fc8e5b",
        "regions": "61d3f2a2bcf0ce424656ff2c856f426c2669f8b1d169a18d4d33a8a255ecd775",
        "captions": "a131ace94795b74eb61448846f07ebad678e62460b1acb50fc7a60a237214b96",
        "questions": "9691183d779e501f44a16059bfa0c2999898fe27e00beebbb2f531f9417edb69"}
    assert rows["captions"]["text"][:2] == ["a small orange diamond left of a small purple square",
                                            "a red triangle right of a yellow diamond"]
    assert rows["questions"]["question"][3] == "what shape is below the orange diamond?"


RELATIONS = ("left of", "right of", "above", "below")
_A = r"an? (\w+) (\w+)"
HYPOTHESES = {  # the forms the generator writes, read back as a person would
    "exists": re.compile(rf"^there is {_A}$"),
    "relation": re.compile(rf"^{_A} is ({'|'.join(RELATIONS)}) {_A}$"),
    "hidden": re.compile(rf"^{_A} is hidden behind (?:the|an?) (\w+) (\w+)$"),
}
EXPRESSION = re.compile(rf"^the (?:(small|large) )?(\w+) (\w+)"
                        rf"(?: ({'|'.join(RELATIONS)}) the (\w+) (\w+))?$")


def _matching(objs, colour, shape, size=None):
    return [o for o in objs if (o["colour"], o["shape"]) == (colour, shape)
            and size in (None, o["size"])]


def _label_read_back(objs, hypothesis) -> str:
    if m := HYPOTHESES["exists"].match(hypothesis):
        return "entailment" if _matching(objs, *m.groups()) else "contradiction"
    if m := HYPOTHESES["relation"].match(hypothesis):
        (a,), (b,) = _matching(objs, *m.group(1, 2)), _matching(objs, *m.group(4, 5))  # unique
        return "entailment" if shapes.relation(a, b) == m.group(3) else "contradiction"
    m = HYPOTHESES["hidden"].match(hypothesis)
    assert m and _matching(objs, *m.group(3, 4)), hypothesis  # the occluder is in the picture
    return "neutral"


def test_entailment_labels_hold_and_are_balanced():
    labels, forms = Counter(), Counter()
    for i in range(300):
        objs = shapes.scene(5, i)["objects"]
        rows = shapes.entailment(objs, shapes.labels_rng(5, i))
        assert [label for _, label in rows] == list(ENTAILMENT_LABELS)
        for hypothesis, label in rows:
            assert _label_read_back(objs, hypothesis) == label, (i, hypothesis)
            labels[label] += 1
            forms[next(f for f, r in HYPOTHESES.items() if r.match(hypothesis)), label] += 1
    assert set(labels.values()) == {300}
    # both forms of entailment and contradiction occur, in numbers that matter
    assert min(forms[f, label] for f in ("exists", "relation")
               for label in ("entailment", "contradiction")) > 50


def test_referring_expressions_single_out_their_region(tmp_path):
    rows = shapes.render_chunk(2, 0, 300, str(tmp_path), None)
    objects = {f"shapes:r:2-{i:07d}-{k}": o for i in range(300)
               for k, o in enumerate(shapes.scene(2, i)["objects"])}
    per_image, forms = Counter(rows["referring"]["image_id"]), Counter()
    assert set(per_image.values()) <= {1, 2} and len(per_image) > 250
    for image, text, region in zip(rows["referring"]["image_id"], rows["referring"]["expression"],
                                   rows["referring"]["region_id"]):
        assert region.startswith(image.replace("shapes:", "shapes:r:") + "-")
        objs = shapes.scene(2, int(image.split("-")[1]))["objects"]
        size, colour, shape, rel, ref_colour, ref_shape = EXPRESSION.match(text).groups()
        found = _matching(objs, colour, shape, size)
        if rel is not None:
            (ref,) = _matching(objs, ref_colour, ref_shape)  # the reference is unique
            found = [o for o in found if shapes.relation(o, ref) == rel]
        assert found == [objects[region]], (image, text)
        forms["relation" if rel else "size" if size else "name"] += 1
    assert forms["name"] > 0 and forms["size"] > 0 and forms["relation"] > 0, forms


def test_ingest_stores_entailment_and_referring(tmp_path, query, rejects):
    r = ingest("shapes", tmp_path / "img", tmp_path / "wh", n_images=30, seed=4, workers=1)
    assert r.balanced and r.rejected == 0 and rejects(tmp_path / "wh") == {}
    wh = tmp_path / "wh"
    assert query(wh, "SELECT label, count(*) FROM entailment GROUP BY ALL ORDER BY 1") == [
        ("contradiction", 30), ("entailment", 30), ("neutral", 30)]
    n, joined = query(wh, """SELECT count(*), count(g.region_id) FROM referring x
        LEFT JOIN regions g ON g.region_id = x.region_id AND g.image_id = x.image_id""")[0]
    assert 30 <= n <= 60 and joined == n
    assert query(wh, "SELECT count(*) FROM entailment e JOIN images i ON i.id = e.image_id "
                     "WHERE e.split <> i.split") == [(0,)]
