"""COCO reader: captions_<split>.json + instances_<split>.json through the real pipeline."""
import pytest

from warehouse.ingest.build import ingest
from warehouse.ingest.sources import InputError
from warehouse.store import Warehouse


def _coco(root, make_image, write_json, with_instances=True):
    make_image(root / "val2017" / "000000000139.jpg", (64, 48), (10, 20, 30))
    make_image(root / "val2017" / "000000000285.jpg", (40, 30), (200, 20, 30))
    images = [
        {"id": 139, "file_name": "000000000139.jpg", "width": 64, "height": 48},
        {"id": 285, "file_name": "000000000285.jpg", "width": 40, "height": 30},
        {"id": 632, "file_name": "000000000632.jpg", "width": 40, "height": 30},  # no file
        {"id": 724, "file_name": "../outside.jpg", "width": 40, "height": 30},    # escapes
    ]
    write_json(root / "annotations" / "captions_val2017.json", {
        "info": {}, "licenses": [], "images": images,
        "annotations": [
            {"id": 5001, "image_id": 139, "caption": "  A woman stands in the dining area. "},
            {"id": 5002, "image_id": 139, "caption": "A room with chairs."},
            {"id": 5003, "image_id": 285, "caption": "A big brown bear."},
            {"id": 5004, "image_id": 999, "caption": "An image nobody listed."},
            {"id": 5005, "image_id": 285, "caption": "   "},
            {"image_id": 285, "caption": "no id"},
        ]})
    if with_instances:
        write_json(root / "annotations" / "instances_val2017.json", {
            "images": images,
            "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                           {"id": 23, "name": "Bear", "supercategory": "animal"}],
            "annotations": [
                {"id": 7001, "image_id": 139, "category_id": 1, "bbox": [2, 3, 10, 5],
                 "area": 50, "iscrowd": 0, "segmentation": [[2, 3, 12, 3, 12, 8]]},
                {"id": 7002, "image_id": 285, "category_id": 23, "bbox": [0.5, 1.5, 20, 10],
                 "area": 200, "iscrowd": 1, "segmentation": {"counts": [1, 2], "size": [30, 40]}},
                {"id": 7003, "image_id": 285, "category_id": 23, "bbox": [5, 5, 0, 4],
                 "iscrowd": 0},                                  # zero width
                {"id": 7004, "image_id": 285, "category_id": 23, "bbox": [30, 20, 25, 5],
                 "iscrowd": 0},                                  # x2 = 55 > width 40
                {"id": 7005, "image_id": 139, "category_id": 77, "bbox": [1, 1, 2, 2],
                 "iscrowd": 0},                                  # unknown category
                {"id": 7006, "image_id": 139, "category_id": 1, "bbox": [1, 1, 2],
                 "iscrowd": 0},                                  # not four numbers
            ]})
    return root


def test_coco_captions_and_instances(tmp_path, make_image, write_json, query, rejects):
    root = _coco(tmp_path / "coco", make_image, write_json)
    wh = tmp_path / "wh"
    r = ingest("coco", source=root, warehouse=wh, split="val2017", workers=1)
    assert r.balanced, r.summary()
    # 4 images + 6 captions + 6 instance boxes (the repeated images[] of instances is not reread)
    assert r.read == 16
    assert r.new == 2 + 3 + 2

    assert query(wh, "SELECT id, source_id, split, width, height, path FROM images ORDER BY id"
                 ) == [("coco:139", "139", "val2017", 64, 48,
                        str(root / "val2017" / "000000000139.jpg")),
                       ("coco:285", "285", "val2017", 40, 30,
                        str(root / "val2017" / "000000000285.jpg"))]
    assert query(wh, "SELECT id, image_id, text, split, box FROM captions ORDER BY id") == [
        ("coco:c:5001", "coco:139", "A woman stands in the dining area.", "val2017", None),
        ("coco:c:5002", "coco:139", "A room with chairs.", "val2017", None),
        ("coco:c:5003", "coco:285", "A big brown bear.", "val2017", None)]
    assert query(wh, "SELECT region_id, image_id, x1, y1, x2, y2, label, source, score, "
                     "attributes FROM regions ORDER BY region_id") == [
        ("coco:r:7001", "coco:139", 2.0, 3.0, 12.0, 8.0, "person", "annotation", None, None),
        ("coco:r:7002", "coco:285", 0.5, 1.5, 20.5, 11.5, "bear", "annotation", None, None)]

    got = rejects(wh)
    assert got.pop("missing image file") == 1
    assert got.pop("image path escapes the data root: ../outside.jpg") == 1
    assert got.pop("refers to an unknown or rejected image") == 1          # caption 5004
    assert got.pop("empty caption or question text") == 1                   # caption 5005
    assert got.pop("caption annotation lacks id or image_id") == 1
    assert got.pop("box has zero area: [5.0, 5.0, 5.0, 9.0]") == 1          # 7003
    assert got.pop("box outside the image") == 1                            # 7004
    assert got.pop("unknown category id 77") == 1                           # 7005
    assert got.pop("box is not four numbers: [1, 1, 2]") == 1               # 7006
    assert got == {}
    # a person can find each reject in the file
    assert query(wh, "SELECT source_file, record_ref FROM rejects WHERE reason = "
                     "'refers to an unknown or rejected image'") == [
        ("captions_val2017.json", "captions_val2017.json:annotations[3]")]
    assert query(wh, "SELECT record_ref FROM rejects WHERE reason = 'box outside the image'"
                 ) == [("instances_val2017.json:annotations[3]",)]

    again = ingest("coco", source=root, warehouse=wh, split="val2017", workers=1)
    assert again.skipped is True
    assert Warehouse(wh).current().version == 1


def test_coco_captions_only_and_image_root(tmp_path, make_image, write_json, query):
    root = _coco(tmp_path / "coco", make_image, write_json, with_instances=False)
    elsewhere = tmp_path / "pixels"
    make_image(elsewhere / "000000000632.jpg", (40, 30))
    wh = tmp_path / "wh"
    r = ingest("coco", source=root, warehouse=wh, split="val2017", image_root=elsewhere,
               workers=1)
    assert r.balanced, r.summary()
    # only 632 exists under the image root
    assert query(wh, "SELECT id, path FROM images") == [
        ("coco:632", str(elsewhere / "000000000632.jpg"))]
    assert query(wh, "SELECT count(*) FROM regions") == [(0,)]
    assert query(wh, "SELECT count(*) FROM captions") == [(0,)]  # their images are missing


def test_coco_requires_split(tmp_path, make_image, write_json):
    root = _coco(tmp_path / "coco", make_image, write_json)
    with pytest.raises(InputError, match="--split"):
        ingest("coco", source=root, warehouse=tmp_path / "wh")


def test_coco_missing_captions_file_writes_nothing(tmp_path, make_image, write_json, query):
    root = _coco(tmp_path / "coco", make_image, write_json)
    wh = tmp_path / "wh"
    with pytest.raises(InputError, match="captions_train2017.json"):
        ingest("coco", source=root, warehouse=wh, split="train2017")
    assert Warehouse(wh).current().version == 0
    for table in ("images", "captions", "regions", "rejects"):
        assert query(wh, f"SELECT count(*) FROM {table}") == [(0,)]


def test_coco_unparseable_instances_writes_nothing(tmp_path, make_image, write_json):
    root = _coco(tmp_path / "coco", make_image, write_json)
    (root / "annotations" / "instances_val2017.json").write_text('{"annotations": [')
    wh = tmp_path / "wh"
    with pytest.raises(InputError, match="instances_val2017.json"):
        ingest("coco", source=root, warehouse=wh, split="val2017", workers=1)
    assert Warehouse(wh).current().version == 0
    assert not any((wh / "_staging").glob("*"))  # the aborted build left no staging behind
