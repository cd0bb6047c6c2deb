"""Visual Genome reader (image_data, objects, attributes, relationships, region descriptions)."""
import pytest

from warehouse.ingest.build import ingest
from warehouse.ingest.sources import InputError
from warehouse.store import Warehouse

URL = "https://cs.stanford.edu/people/rak248"


def _vg(folder, make_image, write_json, optional=True):
    make_image(folder / "VG_100K" / "1.jpg", (64, 48))
    make_image(folder / "VG_100K_2" / "2.jpg", (50, 40))
    write_json(folder / "image_data.json", [
        {"image_id": 1, "url": f"{URL}/VG_100K/1.jpg", "width": 64, "height": 48,
         "coco_id": None, "flickr_id": None},
        {"image_id": 2, "url": f"{URL}/VG_100K_2/2.jpg", "width": 50, "height": 40,
         "coco_id": 139, "flickr_id": None},
        {"image_id": 3, "url": f"{URL}/VG_100K/3.jpg", "width": 50, "height": 40},  # no file
        {"url": f"{URL}/VG_100K/4.jpg"},                                           # no id
    ])
    write_json(folder / "objects.json", [
        {"image_id": 1, "image_url": f"{URL}/VG_100K/1.jpg", "objects": [
            {"object_id": 10, "x": 2, "y": 3, "w": 10, "h": 5, "names": ["Clock"],
             "synsets": ["clock.n.01"]},
            {"object_id": 11, "x": 20, "y": 10, "w": 30, "h": 20, "names": ["street"],
             "synsets": []},
            {"object_id": 12, "x": 60, "y": 40, "w": 10, "h": 10, "names": ["sign"]},  # outside
            {"object_id": 13, "x": 1, "y": 1, "w": 0, "h": 3, "names": ["pole"]},     # no area
        ]},
        {"image_id": 2, "objects": [
            {"object_id": 20, "x": 0, "y": 0, "w": 50, "h": 40, "names": ["man"]}]},
        {"objects": []},                                                           # no id
    ])
    if not optional:
        return folder
    write_json(folder / "attributes.json", [
        {"image_id": 1, "attributes": [
            {"object_id": 10, "names": ["clock"], "x": 2, "y": 3, "w": 10, "h": 5,
             "attributes": ["Green", " tall ", "green"]},
            {"object_id": 11, "names": ["street"], "x": 20, "y": 10, "w": 30, "h": 20}]}])
    write_json(folder / "relationships.json", [
        {"image_id": 1, "relationships": [
            {"relationship_id": 100, "predicate": "ON", "synsets": ["along.r.01"],
             "subject": {"object_id": 10, "x": 2, "y": 3, "w": 10, "h": 5, "name": "clock"},
             "object": {"object_id": 11, "x": 20, "y": 10, "w": 30, "h": 20,
                        "names": ["street"]}},
            {"relationship_id": 101, "predicate": "near",
             "subject": {"object_id": 10, "name": "clock"},
             "object": {"object_id": 999, "x": 1, "y": 1, "w": 2, "h": 2, "name": "tree"}},
            {"relationship_id": 102, "predicate": "has",                 # subject rejected
             "subject": {"object_id": 12, "name": "sign"}, "object": {"object_id": 10}},
            {"predicate": "wears", "subject": {"name": "man"}, "object": {"name": "hat"}},
        ]}])
    write_json(folder / "region_descriptions.json", [
        {"id": 1, "regions": [
            {"region_id": 1382, "image_id": 1, "phrase": "the clock is green in colour",
             "x": 4, "y": 5, "width": 20, "height": 10},
            {"region_id": 1383, "image_id": 1, "phrase": "  ", "x": 4, "y": 5, "width": 20,
             "height": 10},
            {"region_id": 1384, "image_id": 3, "phrase": "its image is missing", "x": 0,
             "y": 0, "width": 5, "height": 5}]},
        {"id": 2, "regions": [
            {"region_id": 2000, "phrase": "A man.", "x": 0, "y": 0, "width": 5, "height": 5}]},
    ])
    return folder


def test_vg_all_files(tmp_path, make_image, write_json, query, rejects):
    src = _vg(tmp_path / "vg", make_image, write_json)
    wh = tmp_path / "wh"
    r = ingest("vg", source=src, warehouse=wh, workers=1)
    assert r.balanced, r.summary()
    assert r.read == 4 + 6 + 4 + 4          # images, regions, relations, captions
    assert r.new == 2 + 3 + 1 + 2
    assert query(wh, "SELECT id, source_id, split, width, height, path FROM images ORDER BY id"
                 ) == [("vg:1", "1", None, 64, 48, str(src / "VG_100K" / "1.jpg")),
                       ("vg:2", "2", None, 50, 40, str(src / "VG_100K_2" / "2.jpg"))]
    assert query(wh, "SELECT region_id, image_id, x1, y1, x2, y2, label, attributes, source "
                     "FROM regions ORDER BY region_id") == [
        ("vg:r:10", "vg:1", 2.0, 3.0, 12.0, 8.0, "clock", ["green", "tall"], "annotation"),
        ("vg:r:11", "vg:1", 20.0, 10.0, 50.0, 30.0, "street", None, "annotation"),
        ("vg:r:20", "vg:2", 0.0, 0.0, 50.0, 40.0, "man", None, "annotation")]
    assert query(wh, "SELECT id, image_id, subject_id, predicate, object_id FROM relations") == [
        ("vg:rel:100", "vg:1", "vg:r:10", "on", "vg:r:11")]
    assert query(wh, "SELECT id, image_id, text, box FROM captions ORDER BY id") == [
        ("vg:d:1382", "vg:1", "the clock is green in colour", [4.0, 5.0, 24.0, 15.0]),
        ("vg:d:2000", "vg:2", "A man.", [0.0, 0.0, 5.0, 5.0])]
    assert rejects(wh) == {
        "missing image file": 1, "image record has no image_id": 1,
        "box outside the image": 1, "box has zero area: [1.0, 1.0, 1.0, 4.0]": 1,
        "entry lacks an image id or a 'objects' list": 1,
        "relation refers to an unknown or rejected region": 2,      # 101 (999), 102 (12)
        "relationship lacks relationship_id or a subject/object with an object_id": 1,
        "empty caption or question text": 1,
        "refers to an unknown or rejected image": 1}                 # description 1384
    assert sorted(query(wh, "SELECT record_ref FROM rejects WHERE reason = "
                            "'relation refers to an unknown or rejected region'")) == [
        ("relationships.json:[0].relationships[1]",), ("relationships.json:[0].relationships[2]",)]
    assert ingest("vg", source=src, warehouse=wh, workers=1).skipped is True


def test_vg_required_files_only_with_split_and_image_root(tmp_path, make_image, write_json,
                                                         query):
    src = _vg(tmp_path / "vg", make_image, write_json, optional=False)
    pixels = tmp_path / "pixels"
    make_image(pixels / "3.jpg", (50, 40))
    wh = tmp_path / "wh"
    r = ingest("vg", source=src, warehouse=wh, split="train", image_root=pixels, workers=1)
    assert r.balanced, r.summary()
    assert query(wh, "SELECT id, split, path FROM images") == [
        ("vg:3", "train", str(pixels / "3.jpg"))]
    assert query(wh, "SELECT count(*) FROM regions") == [(0,)]   # images 1 and 2 not there


@pytest.mark.parametrize("missing", ["image_data.json", "objects.json"])
def test_vg_missing_required_file_writes_nothing(tmp_path, make_image, write_json, query,
                                                 missing):
    src = _vg(tmp_path / "vg", make_image, write_json)
    (src / missing).unlink()
    wh = tmp_path / "wh"
    with pytest.raises(InputError, match=missing):
        ingest("vg", source=src, warehouse=wh)
    assert Warehouse(wh).current().version == 0
    for table in ("images", "regions", "relations", "captions", "rejects"):
        assert query(wh, f"SELECT count(*) FROM {table}") == [(0,)]


def test_vg_bad_optional_file_writes_nothing(tmp_path, make_image, write_json):
    src = _vg(tmp_path / "vg", make_image, write_json)
    write_json(src / "relationships.json", {"relationships": []})  # not a list of images
    wh = tmp_path / "wh"
    with pytest.raises(InputError, match="relationships.json"):
        ingest("vg", source=src, warehouse=wh, workers=1)
    assert Warehouse(wh).current().version == 0
