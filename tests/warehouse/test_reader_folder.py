"""A folder of images with captions.jsonl through the real ingest pipeline."""
import json

import pytest

from warehouse.ingest.build import ingest
from warehouse.ingest.emitter import stable_id
from warehouse.ingest.sources import InputError
from warehouse.store import Warehouse


def write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n"
                              for line in lines))
    return path


@pytest.fixture
def folder(tmp_path, make_image):
    data = tmp_path / "data"
    make_image(data / "cats" / "1.jpg", size=(64, 48))
    make_image(data / "dogs" / "2.png", size=(30, 20))
    write_lines(data / "captions.jsonl", [
        {"image": "cats/1.jpg", "caption": ["a cat", "a  small cat "], "split": "train",
         "regions": [{"box": [1, 2, 10, 12], "label": "Cat"},
                     {"box": [0, 0, 64, 48], "label": "mat"}]},
        {"image": "dogs/2.png", "caption": "a dog", "split": "val"},
        {"image": "cats/1.jpg", "caption": "a cat on a mat"},     # same image, another line
        b'{"image": "cats/1.jpg", "caption": "broken"',            # malformed JSON
        {"image": "dogs/2.png"},                                   # no caption field
        {"caption": "no image"},                                   # no image field
    ])
    return data


def test_folder_captions_and_regions(tmp_path, folder, query, rejects):
    wh = tmp_path / "wh"
    r = ingest("folder", source=folder, warehouse=wh)
    assert r.balanced
    # read: 2 images + 4 captions + 2 regions accepted, 3 line rejects
    assert (r.read, r.new, r.rejected) == (11, 8, 3)
    assert query(wh, "SELECT id, source_id, split, width, height, path FROM images "
                     "ORDER BY id") == [
        ("folder:cats/1.jpg", "cats/1.jpg", "train", 64, 48, str(folder / "cats" / "1.jpg")),
        ("folder:dogs/2.png", "dogs/2.png", "val", 30, 20, str(folder / "dogs" / "2.png"))]
    assert query(wh, "SELECT id, image_id, text, split FROM captions ORDER BY text") == [
        ("folder:c:" + stable_id("cats/1.jpg", "a cat"), "folder:cats/1.jpg", "a cat", "train"),
        ("folder:c:" + stable_id("cats/1.jpg", "a cat on a mat"), "folder:cats/1.jpg",
         "a cat on a mat", None),   # the line had no split
        ("folder:c:" + stable_id("dogs/2.png", "a dog"), "folder:dogs/2.png", "a dog", "val"),
        ("folder:c:" + stable_id("cats/1.jpg", "a small cat"), "folder:cats/1.jpg",
         "a small cat", "train"),
    ]
    assert query(wh, "SELECT region_id, image_id, x1, y1, x2, y2, label, source, score "
                     "FROM regions ORDER BY label") == [
        ("folder:r:" + stable_id("cats/1.jpg", [1, 2, 10, 12], "Cat"), "folder:cats/1.jpg",
         1.0, 2.0, 10.0, 12.0, "cat", "annotation", None),
        ("folder:r:" + stable_id("cats/1.jpg", [0, 0, 64, 48], "mat"), "folder:cats/1.jpg",
         0.0, 0.0, 64.0, 48.0, "mat", "annotation", None)]
    reasons = rejects(wh)
    assert reasons.pop("missing field 'caption'") == 1
    assert reasons.pop("missing field 'image'") == 1
    (malformed, n), = reasons.items()
    assert malformed.startswith("malformed JSON line: ") and n == 1
    assert query(wh, "SELECT source_file, record_ref FROM rejects WHERE reason = ?",
                 [malformed]) == [("captions.jsonl", "line 4")]

    assert ingest("folder", source=folder, warehouse=wh).skipped is True


def test_split_filter(tmp_path, folder, query):
    wh = tmp_path / "wh"
    r = ingest("folder", source=folder, warehouse=wh, split="val")
    assert r.balanced
    # line 1 (train) is skipped; line 3 (no split) is labelled val and brings cats/1.jpg
    assert query(wh, "SELECT id, split FROM images ORDER BY id") == [
        ("folder:cats/1.jpg", "val"), ("folder:dogs/2.png", "val")]
    assert query(wh, "SELECT text FROM captions ORDER BY text") == [("a cat on a mat",),
                                                                    ("a dog",)]
    assert query(wh, "SELECT count(*) FROM regions") == [(0,)]


def test_same_caption_on_two_lines_is_a_duplicate(tmp_path, make_image, query, rejects):
    data = tmp_path / "data"
    make_image(data / "a.png")
    write_lines(data / "captions.jsonl", [{"image": "a.png", "caption": "a red box"},
                                          {"image": "a.png", "caption": "a red box"}])
    wh = tmp_path / "wh"
    r = ingest("folder", source=data, warehouse=wh)
    assert r.balanced and r.new == 2
    assert query(wh, "SELECT count(*) FROM images") == [(1,)]
    assert rejects(wh) == {"duplicate id": 1}
    assert query(wh, "SELECT record_ref FROM rejects") == [("line 2 caption[0]",)]


def test_missing_or_unparseable_captions_file(tmp_path, make_image):
    data = tmp_path / "data"
    make_image(data / "a.png")
    wh = tmp_path / "wh"
    with pytest.raises(InputError, match="captions.jsonl"):
        ingest("folder", source=data, warehouse=wh)
    write_lines(data / "captions.jsonl", [b"not json", b"{also not json"])
    with pytest.raises(InputError, match="captions.jsonl"):
        ingest("folder", source=data, warehouse=wh)
    assert Warehouse(wh).current().version == 0
    assert not list((wh / "tables").rglob("*.parquet")) if (wh / "tables").exists() else True
    assert not any((wh / "_staging").iterdir()) if (wh / "_staging").exists() else True
