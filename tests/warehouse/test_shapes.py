"""The shapes generator: deterministic, exact boxes, captions and answers that match the pixels."""
import numpy as np
from PIL import Image

from warehouse.ingest.build import ingest
from warehouse.ingest.readers import shapes


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
