"""RefCOCO/+/g reader (the refer toolkit's refs(<by>).p + instances.json) through the real
pipeline."""
import os
import pickle

import pytest
from formats import coco_name, ref, refcoco, sent

from warehouse.ingest.build import ingest
from warehouse.ingest.sources import InputError
from warehouse.store import Warehouse


def test_refcoco_plus_rows_and_rejects(tmp_path, make_image, write_json, query, rejects):
    src = refcoco(tmp_path / "refcoco+", make_image, write_json)
    wh = tmp_path / "wh"
    r = ingest("refcoco+", source=src, warehouse=wh, workers=1)
    assert r.balanced, r.summary()
    # refs rejected as a whole: 103, 104, 400, "not a ref"; sentences read: 10; images 1, 2, 3;
    # regions of those images: 10, 11, 12, 20, 21, 30
    assert r.read == 4 + 10 + 3 + 6
    assert r.new == 2 + 3 + 4             # images 1, 2; regions 10, 11, 21; four expressions
    assert query(wh, "SELECT id, source_id, split, width, path FROM images ORDER BY id") == [
        ("refcoco+:1", "1", "testA", 64, str(src / "train2014" / coco_name(1))),
        ("refcoco+:2", "2", "val", 40, str(src / coco_name(2)))]
    assert query(wh, "SELECT region_id, image_id, x1, y1, x2, y2, label, source FROM regions "
                     "ORDER BY region_id") == [
        ("refcoco+:r:10", "refcoco+:1", 1.0, 2.0, 21.0, 12.0, "person", "annotation"),
        ("refcoco+:r:11", "refcoco+:1", 30.0, 5.0, 40.0, 15.0, "dog", "annotation"),
        ("refcoco+:r:21", "refcoco+:2", 5.0, 5.0, 15.0, 15.0, "dog", "annotation")]
    assert query(wh, "SELECT id, image_id, region_id, expression, split FROM referring "
                     "ORDER BY id") == [
        ("refcoco+:x:1000", "refcoco+:1", "refcoco+:r:10", "man on the left", "testA"),
        ("refcoco+:x:1001", "refcoco+:1", "refcoco+:r:10", "guy in red", "testA"),
        ("refcoco+:x:1010", "refcoco+:1", "refcoco+:r:11", "the dog", "testA"),
        ("refcoco+:x:2010", "refcoco+:2", "refcoco+:r:21", "small dog", "val")]
    assert rejects(wh) == {
        "referring expression: empty caption or question text": 1,       # 1002
        "sentence has no sent_id": 1,
        "unknown category id 99": 1,                                       # region 12
        "referring expression refers to an unknown or rejected region": 2,  # 1020, 2000
        "ref refers to an unknown annotation 77": 1,
        "ref's image_id 1 differs from its annotation's 2": 1,
        "box outside the image": 1,                                        # region 20
        "duplicate id": 1,                                                 # sent 1000 again
        "missing image file": 1,                                           # image 3
        "refers to an unknown or rejected image": 2,                       # region 30, 3000
        "ref lacks ref_id, ann_id or image_id": 2}
    assert r.new == sum(n for (n,) in query(wh, "SELECT count(*) FROM images UNION ALL "
                                                "SELECT count(*) FROM regions UNION ALL "
                                                "SELECT count(*) FROM referring"))
    assert ingest("refcoco+", source=src, warehouse=wh, workers=1).skipped is True


def test_refcoco_split_and_refcocog_partition(tmp_path, make_image, write_json, query):
    src = refcoco(tmp_path / "refcocog", make_image, write_json, protocol=4)
    os.rename(src / "refs(unc).p", src / "refs(umd).p")
    (src / "refs(google).p").write_bytes(pickle.dumps([]))
    wh = tmp_path / "wh"
    with pytest.raises(InputError, match=r"several refs files.*refs\(google\)\.p, refs\(umd\)"):
        ingest("refcocog", source=src, warehouse=wh, workers=1)
    r = ingest("refcocog", source=src / "refs(umd).p", warehouse=wh, split="val", workers=1)
    assert r.balanced, r.summary()
    assert query(wh, "SELECT id, region_id, split FROM referring ORDER BY id") == [
        ("refcocog:x:1000", "refcocog:r:21", "val"), ("refcocog:x:2010", "refcocog:r:21", "val")]


def test_refcoco_referring_a_region_of_another_image(tmp_path, make_image, write_json, query,
                                                     rejects):
    """A region id already in the warehouse on another image is no referent of this one (here:
    an edited instances.json moved annotation 10 to image 2)."""
    src = refcoco(tmp_path / "refcoco", make_image, write_json,
                   refs=[ref(1, 10, 1, "train", [sent(1, "man")])])
    wh = tmp_path / "wh"
    assert ingest("refcoco", source=src, warehouse=wh, workers=1).balanced
    write_json(src / "instances.json", {
        "images": [{"id": 2, "file_name": coco_name(2)}],
        "annotations": [{"id": 10, "image_id": 2, "bbox": [1, 1, 5, 5], "category_id": 1}],
        "categories": [{"id": 1, "name": "person"}]})
    (src / "refs(unc).p").write_bytes(pickle.dumps([ref(2, 10, 2, "train",
                                                         [sent(2, "dog")])]))
    r = ingest("refcoco", source=src, warehouse=wh, workers=1)
    assert r.balanced, r.summary()
    assert rejects(wh) == {"unknown category id 99": 1,   # region 12 of the first ingest
                           "referring expression refers to a region of another image": 1}
    assert query(wh, "SELECT id, image_id, region_id FROM referring") == [
        ("refcoco:x:1", "refcoco:1", "refcoco:r:10")]


def test_refcoco_code_in_the_refs_pickle_is_refused(tmp_path, make_image, write_json):
    marker = tmp_path / "pwned"

    class MakeDir:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    src = refcoco(tmp_path / "refcoco", make_image, write_json,
                   refs=[ref(1, 10, 1, "train", [sent(1, "man")]), MakeDir()])
    wh = tmp_path / "wh"
    with pytest.raises(InputError, match=r"refs\(unc\)\.p is refused: the pickle calls "
                                         r"posix\.mkdir"):
        ingest("refcoco", source=src, warehouse=wh, workers=1)
    assert not marker.exists()
    assert Warehouse(wh).current().version == 0


def test_refcoco_hostile_refs_cost_one_row_each(tmp_path, make_image, write_json, query,
                                                rejects):
    src = refcoco(tmp_path / "refcoco", make_image, write_json, refs=[
        ref(1, 10, 1, "train", [sent(1, "man")]),
        {"ref_id": 2, "ann_id": [10], "image_id": 1, "sentences": [sent(2, "x")]},  # list id
        ref(3, 11, 1, "train", [sent(3, ["a", "list"]), sent(4, "y" * 20_000),
                                 sent(True, "boolean id"), "a string"]),
        ref(5, 11, 1, "train", "not a list"),
    ])
    wh = tmp_path / "wh"
    r = ingest("refcoco", source=src, warehouse=wh, workers=1)
    assert r.balanced, r.summary()
    assert rejects(wh) == {
        "ref lacks ref_id, ann_id or image_id": 1,
        "referring expression: text is not a string: list": 1,
        "referring expression longer than 10000 characters": 1,
        "sentence has no sent_id": 2,
        "ref has no sentences": 1,
        "unknown category id 99": 1}                          # region 12 of image 1
    assert query(wh, "SELECT id, expression FROM referring") == [("refcoco:x:1", "man")]


def test_refcoco_refs_that_are_not_a_list_write_nothing(tmp_path, make_image, write_json):
    src = refcoco(tmp_path / "refcoco", make_image, write_json, refs={"refs": []})
    wh = tmp_path / "wh"
    with pytest.raises(InputError, match=r"not a refs file \(top level is a dict"):
        ingest("refcoco", source=src, warehouse=wh, workers=1)
    (src / "refs(unc).p").write_bytes(pickle.dumps([])[:-1])  # truncated
    with pytest.raises(InputError, match=r"refs\(unc\)\.p is unreadable"):
        ingest("refcoco", source=src, warehouse=wh, workers=1)
    assert Warehouse(wh).current().version == 0
