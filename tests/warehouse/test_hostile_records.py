"""Hostile input: values built to break the pipeline rather than by mistake. Each one costs its
record a `rejects` row with a reason; the build completes, the good records of the same input
are accepted and read == accepted + rejected. The ingest's resources are bounded too: special
files are never opened, huge files never read, lock waits end, odd warehouse paths work."""
import json
import os
import re
import resource
import subprocess
import sys
import threading

import pytest
from helpers import ROOT

from warehouse.ingest import checks, sources
from warehouse.ingest.build import ingest
from warehouse.ingest.checks import MAX_TEXT_CHARS
from warehouse.ingest.sources import InputError
from warehouse.store import Warehouse, WarehouseError

GOOD = {"image": "good.png", "caption": "fine"}
DEEP = b"[" * 100_000 + b"]" * 100_000   # far deeper than Python's parser goes


@pytest.fixture
def data(tmp_path, make_image):
    folder = tmp_path / "data"
    make_image(folder / "good.png", size=(32, 24))
    return folder


def ingest_jsonl(tmp_path, folder, lines: list, **kw):
    (folder / "captions.jsonl").write_bytes(b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n"
        for line in lines))
    wh = tmp_path / "wh"
    return wh, ingest("folder", source=folder, warehouse=wh, workers=1, **kw)


def assert_rejected(wh, r, rejects, query, reason, captions=1, regions=0):
    """The build completed with exactly this one reject; the good records are in."""
    assert r.balanced and r.read == r.new + r.existing + r.rejected
    assert rejects(wh) == {reason: 1}
    assert query(wh, "SELECT id FROM images") == [("folder:good.png",)]
    assert query(wh, "SELECT count(*) FROM captions") == [(captions,)]
    assert query(wh, "SELECT count(*) FROM regions") == [(regions,)]


# ---- one bad field costs one row ----------------------------------------------------------------
def test_deeply_nested_json_line(tmp_path, data, rejects, query):
    wh, r = ingest_jsonl(tmp_path, data, [GOOD, b'{"image": "good.png", "caption": ' + DEEP + b"}"])
    assert_rejected(wh, r, rejects, query, "malformed JSON line: nested too deeply")


def test_split_that_is_not_a_string(tmp_path, data, make_image, rejects, query):
    make_image(data / "two.png")
    wh, r = ingest_jsonl(tmp_path, data, [GOOD, {"image": "two.png", "caption": "x",
                                                 "split": 2017}])
    # the image and its caption both carry the split, so both are refused
    assert r.balanced and rejects(wh) == {"split is not a string: int": 2}
    assert query(wh, "SELECT id, split FROM images") == [("folder:good.png", None)]


@pytest.mark.parametrize("box, reason", [
    ([0, 0, 10 ** 400, 5], "box coordinate is not finite or out of range"),
    ([0, 0, float("nan"), 5], "box coordinate is not finite or out of range: nan"),
    (["0", "0", "5", "5"], "box coordinate is not a number: '0'"),
    ([True, 0, 5, 5], "box coordinate is not a number: True"),
    ([0, 0, 5, [5]], "box coordinate is not a number: [5]"),
    ("0 0 5 5", "box is not four numbers: '0 0 5 5'"),
])
def test_box_coordinates_must_be_finite_numbers(tmp_path, data, rejects, query, box, reason):
    wh, r = ingest_jsonl(tmp_path, data, [{**GOOD, "regions": [
        {"box": [0, 0, 5, 5], "label": "ok"}, {"box": box, "label": "bad"}]}])
    (got, n), = rejects(wh).items()
    assert n == 1 and got.startswith(reason) and len(got) < 200
    assert r.balanced and query(wh, "SELECT label FROM regions") == [("ok",)]


@pytest.mark.parametrize("line, reason", [
    (b'{"image": "go\\u0000od.png", "caption": "x"}', "image path contains NUL"),
    (b'{"image": "\\udc80.png", "caption": "x"}', "image path is not valid UTF-8"),
    (b'{"image": "\\ud800.png", "caption": "x"}', "image path is not valid UTF-8"),
    (b'{"image": ["good.png"], "caption": "x"}', "image path is not a string: list"),
    (json.dumps({"image": "a/" * 3000 + "b.png", "caption": "x"}).encode(),
     "image path longer than 4096 characters"),
])
def test_hostile_image_path(tmp_path, data, rejects, query, line, reason):
    wh, r = ingest_jsonl(tmp_path, data, [GOOD, line])
    assert_rejected(wh, r, rejects, query, reason)


@pytest.mark.parametrize("label, reason", [
    ("a\u0000b", "label contains NUL"),
    ("a\udc80b", "label is not valid UTF-8"),
    ("x" * 201, "label longer than 200 characters"),
    (7, "label is not a string: int"),
])
def test_hostile_label(tmp_path, data, rejects, query, label, reason):
    wh, r = ingest_jsonl(tmp_path, data, [{**GOOD, "regions": [
        {"box": [0, 0, 5, 5], "label": "ok"}, {"box": [1, 1, 6, 6], "label": label}]}])
    assert_rejected(wh, r, rejects, query, reason, regions=1)


def test_huge_caption(tmp_path, data, rejects, query):
    wh, r = ingest_jsonl(tmp_path, data, [GOOD, {"image": "good.png",
                                                 "caption": "a" * 10_000_000}])
    assert_rejected(wh, r, rejects, query, f"caption longer than {MAX_TEXT_CHARS} characters")
    assert query(wh, "SELECT max(length(text)), max(length(raw)) FROM captions, rejects"
                 ) == [(4, 2000)]


def test_caption_with_nul(tmp_path, data, rejects, query):
    wh, r = ingest_jsonl(tmp_path, data, [GOOD, {"image": "good.png", "caption": "a\u0000b"}])
    assert_rejected(wh, r, rejects, query, "caption contains NUL")


def test_line_too_long_is_one_reject(tmp_path, data, rejects, query, monkeypatch):
    monkeypatch.setattr(sources, "MAX_LINE_BYTES", 1000)
    wh, r = ingest_jsonl(tmp_path, data, [{"image": "good.png", "caption": "x" * 5000}, GOOD])
    assert_rejected(wh, r, rejects, query, "line longer than 1000 bytes")
    assert query(wh, "SELECT record_ref FROM rejects") == [("line 1",)]


def test_nul_byte_in_a_tsv_path(tmp_path, data, rejects, query):
    # a raw NUL on one row used to make the whole file "binary" and refuse the build
    table = data / "captions.tsv"
    table.write_bytes(b"a good image\tgood.png\nsneaky\tgo\x00od.png\n")
    wh = tmp_path / "wh"
    r = ingest("tsv", source=table, warehouse=wh, workers=1)
    assert r.balanced and rejects(wh) == {"image path contains NUL": 1}
    assert query(wh, "SELECT id FROM images") == [("tsv:good.png",)]


def test_hostile_coco_records(tmp_path, make_image, rejects, query, write_json):
    make_image(tmp_path / "val" / "1.jpg", size=(64, 48))
    deep = json.loads("[" * 300 + "]" * 300)   # parses, but is no caption
    write_json(tmp_path / "annotations" / "captions_val.json", {
        "images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "x\u0000.jpg"}],
        "annotations": [{"id": 10, "image_id": 1, "caption": "a cat"},
                        {"id": 11, "image_id": 1, "caption": deep},
                        {"id": 12, "image_id": 1, "caption": "b" * 10_000_000}]})
    write_json(tmp_path / "annotations" / "instances_val.json", {
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [{"id": 20, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]},
                        {"id": 21, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10 ** 400, 5]},
                        {"id": 22, "image_id": 1, "category_id": 1, "bbox": ["1", 1, 5, 5]},
                        {"id": 23, "image_id": 1, "category_id": "z" * 1_000_000,
                         "bbox": [1, 1, 5, 5]}]})
    wh = tmp_path / "wh"
    r = ingest("coco", source=tmp_path, warehouse=wh, split="val", workers=1)
    assert r.balanced and r.rejected == 6
    assert r.rejected_by_reason == {
        "image path contains NUL": 1, "text is not a string": 1,
        f"caption longer than {MAX_TEXT_CHARS} characters": 1,
        "box coordinate is not finite or out of range": 1, "box coordinate is not a number": 1,
        "unknown category id " + checks.shown("z" * 1_000_000): 1}   # quoted, cut short
    assert query(wh, "SELECT id FROM images") == [("coco:1",)]
    assert query(wh, "SELECT text FROM captions") == [("a cat",)]
    assert query(wh, "SELECT region_id FROM regions") == [("coco:r:20",)]


def test_deeply_nested_coco_file_is_an_input_error(tmp_path):
    # a COCO file is one JSON document: too deep to parse is unreadable, named, not a traceback
    path = tmp_path / "annotations" / "captions_val.json"
    path.parent.mkdir()
    path.write_bytes(b'{"images": [], "annotations": [' + DEEP + b"]}")
    wh = tmp_path / "wh"
    with pytest.raises(InputError, match=f"{path} is unreadable: JSON nested too deeply"):
        ingest("coco", source=tmp_path, warehouse=wh, split="val", workers=1)
    assert Warehouse(wh).current().version == 0


def test_vinvl_score_must_be_a_number(tmp_path, data, rejects, query):
    wh, _ = ingest_jsonl(tmp_path, data, [GOOD])
    preds = tmp_path / "predictions.tsv"
    objects = [{"class": "a", "conf": 0.5, "rect": [0, 0, 8, 8]},
               {"class": "b", "conf": "0.5", "rect": [0, 0, 9, 9]},
               {"class": "c", "conf": 10 ** 400, "rect": [0, 0, 7, 7]}]
    preds.write_text("folder:good.png\t" + json.dumps({"objects": objects}) + "\n")
    r = ingest("vinvl-predictions", source=preds, warehouse=wh, workers=1)
    assert r.balanced and r.rejected_by_reason == {"score is not a number": 1,
                                                   "score is not finite or out of range": 1}
    assert query(wh, "SELECT label FROM regions") == [("a",)]


# ---- resources --------------------------------------------------------------------------------
def test_fifo_image_does_not_hang(tmp_path, data, rejects, query):
    os.mkfifo(data / "x.png")
    result = {}

    def run():
        result["r"] = ingest_jsonl(tmp_path, data, [GOOD, {"image": "x.png", "caption": "y"}])

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    if t.is_alive():  # stuck opening the FIFO: give it a writer so the thread can end
        os.close(os.open(data / "x.png", os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("the ingest blocked on a FIFO named like an image")
    wh, r = result["r"]
    assert r.balanced and rejects(wh) == {"image path is not a regular file": 1,
                                          "refers to an unknown or rejected image": 1}
    assert query(wh, "SELECT id FROM images") == [("folder:good.png",)]


def test_huge_sparse_image_is_not_read(tmp_path, data, rejects, query, monkeypatch):
    big = data / "x.png"
    with open(big, "wb") as f:
        f.truncate(3 << 30)   # 3 GiB, sparse: costs no disk, only what reading it would
    opened = []
    real_open = os.open
    monkeypatch.setattr(checks.os, "open", lambda p, *a, **k: opened.append(str(p))
                        or real_open(p, *a, **k))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB
    wh, r = ingest_jsonl(tmp_path, data, [GOOD, {"image": "x.png", "caption": "y"}])
    assert str(big) not in opened
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 500 * 1024
    limit = checks.max_image_bytes(checks.DEFAULT_MAX_IMAGE_PIXELS)
    assert r.balanced and rejects(wh) == {f"image file larger than {limit} bytes": 1,
                                          "refers to an unknown or rejected image": 1}


HOLD_LOCK = """
import sys, time
from warehouse.store import Warehouse
with Warehouse(sys.argv[1]).lock():
    print("held", flush=True)
    time.sleep(120)
"""


def test_lock_wait_times_out_naming_the_holder(tmp_path, data, monkeypatch):
    wh = tmp_path / "wh"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(wh)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        monkeypatch.setenv("MVP_LOCK_TIMEOUT_S", "1")
        holder_note = (rf"\(pid {holder.pid} on {re.escape(os.uname().nodename)} since .*: "
                       rf"-c {re.escape(str(wh))}\); gave up after 1 s")
        with pytest.raises(WarehouseError, match="locked by another writer " + holder_note):
            ingest_jsonl(tmp_path, data, [GOOD])
    finally:
        holder.kill()
        holder.wait()
    _, r = ingest_jsonl(tmp_path, data, [GOOD])   # a dead holder's lock is free again
    assert r.new == 2


def test_warehouse_path_with_a_quote(tmp_path, data, query):
    wh = tmp_path / "it's a warehouse"
    (data / "captions.jsonl").write_text(json.dumps(GOOD) + "\n")
    r = ingest("folder", source=data, warehouse=wh, workers=1)
    assert r.balanced and r.new == 2
    (data / "captions.jsonl").write_text(json.dumps(GOOD) + "\n"
                                         + json.dumps({**GOOD, "caption": "more"}) + "\n")
    r = ingest("folder", source=data, warehouse=wh, workers=1)   # merges with existing parts
    assert (r.new, r.existing) == (1, 2)
    assert query(wh, "SELECT count(*) FROM captions") == [(2,)]
