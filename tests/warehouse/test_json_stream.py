"""Streamed JSON input files: every value as json.load makes it, errors as whole-file
InputErrors, and memory that does not grow with the file."""
import json
import re
import subprocess
import sys

import pytest

from warehouse.ingest import json_stream
from warehouse.ingest.build import ingest
from warehouse.ingest.json_stream import array_elements, members_in_order, object_members
from warehouse.ingest.sources import InputError

# values json.load accepts that a streaming parser of its own may not make the same way
ODD = ('[{"big": 1' + "0" * 400 + ', "huge": 1e400, "nan": NaN, "neg": -Infinity, "zero": -0,'
       ' "lone": "\\ud800", "pair": "\\ud83d\\ude00", "dup": 1, "dup": 2, "deep": '
       + "[" * 300 + "]" * 300 + '}, 12345, "x", null, [], {}]')


@pytest.fixture
def tiny_window(monkeypatch):
    """A 7-byte read size, so every value is cut by the window's end somewhere."""
    monkeypatch.setattr(json_stream, "CHUNK_BYTES", 7)


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN != NaN


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-32-le"])
def test_elements_are_what_json_load_makes(tmp_path, tiny_window, encoding):
    path = tmp_path / "odd.json"
    path.write_bytes(ODD.encode(encoding, "surrogatepass"))
    assert _same(list(array_elements(path)), json.loads(path.read_bytes()))


@pytest.mark.parametrize("chunk", range(1, 12))
def test_numbers_cut_by_the_window_read_whole(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(json_stream, "CHUNK_BYTES", chunk)
    path = tmp_path / "numbers.json"
    path.write_text("[1.5e+10,1.5,-2.25E-3,10,0.5,-0,7e1,123456789012,1]")
    assert list(array_elements(path)) == json.loads(path.read_text())


def test_members_stream_arrays_and_skip_the_ones_left(tmp_path, tiny_window):
    path = tmp_path / "doc.json"
    path.write_text(json.dumps({"info": {"v": 1}, "images": [1, 2, 3], "annotations": [[4], 5],
                                "categories": []}, indent=1))
    seen = []
    for key, value in object_members(path):
        if key == "annotations":
            value = list(value)
        seen.append((key, value if not isinstance(value, json_stream.Elements) else "skipped"))
    assert seen == [("info", {"v": 1}), ("images", "skipped"), ("annotations", [[4], 5]),
                    ("categories", "skipped")]


def test_members_come_in_the_asked_order_whatever_the_file_order(tmp_path):
    path = tmp_path / "doc.json"
    path.write_text('{"annotations": [3, 4], "other": 0, "images": [1, 2]}')
    got = [(key, value if value is None else list(value))
           for key, value in members_in_order(path, ["images", "missing", "annotations"])]
    assert got == [("images", [1, 2]), ("missing", None), ("annotations", [3, 4])]


@pytest.mark.parametrize("text, reason", [
    ("", "Expecting '[' to start an array"),
    ("[1, 2", "Expecting ',' or ']' after an array element"),
    ('[{"a": 1}, {"a": ', "Expecting value"),
    ('[{"a": "unterminated', "Unterminated string"),
    ("[1, 2,]", "Expecting value"),
    ("[1] [2]", "Extra data"),
    ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
])
def test_a_broken_array_file_is_an_input_error(tmp_path, tiny_window, text, reason):
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(InputError, match=re.escape(f"{path} is unreadable: {reason}")):
        list(array_elements(path))


@pytest.mark.parametrize("text, reason", [
    ('{"images": [], "images": []}', "key 'images' given twice"),
    ('{"images": [] "x": 1}', "Expecting ',' or '}' after an object member"),
    ('{"images": [], }', "Expecting property name"),
    ('{"images" []}', "Expecting ':' after a property name"),
])
def test_a_broken_object_file_is_an_input_error(tmp_path, text, reason):
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(InputError, match=re.escape(f"{path} is unreadable: {reason}")):
        list(object_members(path))


def test_not_utf8_is_an_input_error(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'[{"caption": "caf\xe9"}]')
    with pytest.raises(InputError, match=f"{path} is unreadable: 'utf-8' codec"):
        list(array_elements(path))


def test_coco_lists_in_any_order_give_the_same_build(tmp_path, make_image, write_json, query,
                                                      rejects):
    """JSON does not fix the order of an object's keys: annotations before images, and
    categories after annotations (as in COCO's own instances files), read the same."""
    builds = []
    for order in (("images", "annotations", "categories"), ("categories", "annotations",
                                                            "images")):
        root = tmp_path / "-".join(order)
        make_image(root / "val" / "1.jpg", (64, 48))
        lists = {"images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "2.jpg"}],
                 "categories": [{"id": 1, "name": "cat"}]}
        write_json(root / "annotations" / "captions_val.json", {
            key: lists.get(key, [{"id": 10, "image_id": 1, "caption": "a cat"},
                                 {"id": 11, "image_id": 2, "caption": "gone"}, {"id": 12}])
            for key in order if key != "categories"})
        write_json(root / "annotations" / "instances_val.json", {
            key: lists.get(key, [{"id": 20, "image_id": 1, "category_id": 1,
                                  "bbox": [1, 1, 5, 5]},
                                 {"id": 21, "image_id": 1, "category_id": 9,
                                  "bbox": [1, 1, 5, 5]}]) for key in order})
        wh = root / "wh"
        r = ingest("coco", source=root, warehouse=wh, split="val", workers=1)
        assert r.balanced, r.summary()
        builds.append((r.read, rejects(wh), query(wh, "SELECT id, width FROM images"),
                       query(wh, "SELECT id, image_id, text FROM captions ORDER BY id"),
                       query(wh, "SELECT region_id, label, x1, y2 FROM regions")))
    assert builds[0] == builds[1]
    assert builds[0][0] == 2 + 3 + 2
    assert builds[0][1] == {"missing image file": 1, "caption annotation lacks id or image_id": 1,
                            "refers to an unknown or rejected image": 1,
                            "unknown category id 9": 1}


def test_karpathy_dataset_named_after_its_images(tmp_path, make_image, query):
    """Karpathy's own files put "dataset" last: the ids still carry it, not the file's name."""
    make_image(tmp_path / "1.jpg", (40, 30))
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": [
        {"filename": "1.jpg", "split": "val", "sentences": [{"raw": "a cat.", "sentid": 5}]}],
        "dataset": "flickr8k"}))
    wh = tmp_path / "wh"
    r = ingest("karpathy", source=tmp_path / "dataset_coco.json", warehouse=wh, workers=1)
    assert r.balanced and r.new == 2, r.summary()
    assert query(wh, "SELECT id FROM images UNION ALL SELECT id FROM captions") == [
        ("karpathy:flickr8k:1",), ("karpathy:c:flickr8k:5",)]


# reads objects.json in a fresh process, so its peak RSS is the reader's own
MEASURE = r"""
import resource, sys
from pathlib import Path
from warehouse.ingest.readers import visual_genome
from warehouse.ingest.sources import SourceContext

class CountingEmitter:  # counts what the reader emits and keeps nothing
    regions = 0
    def region(self, *args, **kwargs):
        CountingEmitter.regions += 1

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
visual_genome.read(SourceContext("vg", Path(sys.argv[1])), CountingEmitter())
print(CountingEmitter.regions, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def _write_vg_objects(folder, images: int, objects_per_image: int) -> int:
    """A Visual Genome objects.json the shape of the real one; its size in bytes."""
    (folder / "image_data.json").write_text("[]")
    with open(folder / "objects.json", "w") as f:
        f.write("[")
        for i in range(images):
            objects = [{"object_id": i * 1000 + j, "x": j, "y": j, "w": 10, "h": 12,
                        "names": ["tree"], "synsets": ["tree.n.01"]}
                       for j in range(objects_per_image)]
            f.write(("," if i else "") + json.dumps({"image_id": i, "objects": objects}))
        f.write("]")
    return (folder / "objects.json").stat().st_size


def test_reading_vg_objects_takes_memory_independent_of_the_file(tmp_path):
    size = _write_vg_objects(tmp_path, images=12_000, objects_per_image=40)
    assert size > 45e6
    out = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path)], check=True,
                         capture_output=True, text=True).stdout.split()
    regions, growth = int(out[0]), int(out[1])
    assert regions == 12_000 * 40
    # json.load of this file takes ~6x its size; the stream holds a 1 MB window and one entry
    assert growth < size / 10, f"peak RSS grew {growth / 1e6:.1f} MB for a {size / 1e6:.0f} MB file"
