"""SNLI-VE reader (snli_ve_{train,dev,test}.jsonl) through the real pipeline."""

import pytest
from formats import line, snli_ve, write

from warehouse.ingest.build import ingest
from warehouse.ingest.checks import shown
from warehouse.ingest.emitter import stable_id
from warehouse.ingest.sources import InputError
from warehouse.store import Warehouse


def test_snli_ve_rows_and_rejects(tmp_path, make_image, query, rejects):
    src = snli_ve(tmp_path / "snli", make_image)
    wh = tmp_path / "wh"
    r = ingest("snli-ve", source=src, warehouse=wh, workers=1)
    assert r.balanced, r.summary()
    assert r.read == 11 + 3               # lines; images 1000, 3000, 2000
    assert r.new == 2 + 4                 # images 1000 and 2000; four entailment rows
    assert query(wh, "SELECT id, source_id, split, width, path FROM images ORDER BY id") == [
        ("snli-ve:1000", "1000", "train", 40, str(src / "flickr30k_images" / "1000.jpg")),
        ("snli-ve:2000", "2000", "dev", 20, str(src / "2000.jpg"))]
    neutral_id = "snli-ve:" + stable_id("train", "1000", "The dogs are brothers.")
    assert query(wh, "SELECT id, image_id, hypothesis, label, split FROM entailment "
                     "ORDER BY id") == sorted([
        ("snli-ve:1000.jpg#0r1c", "snli-ve:1000", "The dogs are asleep.", "contradiction",
         "train"),
        ("snli-ve:1000.jpg#0r1e", "snli-ve:1000", "Dogs are outside.", "entailment", "train"),
        (neutral_id, "snli-ve:1000", "The dogs are brothers.", "neutral", "train"),
        ("snli-ve:2000.jpg#1r1e", "snli-ve:2000", "A person.", "entailment", "dev")])
    assert rejects(wh) == {
        "gold_label '-': the annotators did not agree": 1,
        "entailment label 'maybe' is not one of entailment, neutral, contradiction": 1,
        "hypothesis: empty caption or question text": 1,
        "duplicate id": 1,
        "line has no valid Flickr30K_ID: '12ab'": 1,
        "malformed JSON line: Expecting value: line 1 column 39 (char 38)": 1,
        "missing image file": 1,
        "refers to an unknown or rejected image": 1}           # the line of image 3000
    assert query(wh, "SELECT source_file, record_ref FROM rejects WHERE reason = "
                     "'duplicate id'") == [("snli_ve_train.jsonl", "line 7")]
    assert ingest("snli-ve", source=src, warehouse=wh, workers=1).skipped is True


def test_snli_ve_split_and_image_root(tmp_path, make_image, query):
    src = snli_ve(tmp_path / "snli", make_image)
    images = tmp_path / "elsewhere"
    make_image(images / "2000.jpg", (24, 24), fmt="JPEG")
    wh = tmp_path / "wh"
    r = ingest("snli-ve", source=src, warehouse=wh, split="dev", image_root=images, workers=1)
    assert r.balanced and r.read == 2 and r.new == 2 and r.rejected == 0, r.summary()
    assert query(wh, "SELECT path, width FROM images") == [(str(images / "2000.jpg"), 24)]
    # the train file later adds its own rows; the dev rows stay as they are
    r = ingest("snli-ve", source=src, warehouse=wh, split="train", workers=1)
    assert r.balanced, r.summary()
    assert query(wh, "SELECT split, count(*) FROM entailment GROUP BY ALL ORDER BY 1") == [
        ("dev", 1), ("train", 3)]


def test_snli_ve_unknown_split_or_no_files_writes_nothing(tmp_path, make_image):
    src = snli_ve(tmp_path / "snli", make_image)
    wh = tmp_path / "wh"
    with pytest.raises(InputError, match="splits train, dev, test"):
        ingest("snli-ve", source=src, warehouse=wh, split="val")
    with pytest.raises(InputError, match="snli_ve_test.jsonl"):
        ingest("snli-ve", source=src, warehouse=wh, split="test")
    assert Warehouse(wh).current().version == 0


def test_snli_ve_hostile_lines_cost_one_row_each(tmp_path, make_image, query, rejects):
    src = tmp_path / "snli"
    make_image(src / "1000.jpg", fmt="JPEG")
    write(src / "snli_ve_test.jsonl", [
        line("1000", "Fine.", "neutral", "p0"),
        b'{"Flickr30K_ID": "1000", "sentence2": "caf\xe9", "gold_label": "neutral"}',
        line("1" * 100, "Long id.", "neutral", "p1"),
        line(True, "Boolean id.", "neutral", "p2"),
        line("1000", {"text": "an object"}, "neutral", "p3"),
        line("1000", "Listed label.", ["entailment"], "p4"),
        line("1000", "x" * 20_000, "entailment", "p5"),
        b"[1, 2]",
    ])
    wh = tmp_path / "wh"
    r = ingest("snli-ve", source=src, warehouse=wh, workers=1)
    assert r.balanced and r.new == 2 and r.read == 9, r.summary()
    assert rejects(wh) == {
        "line is not valid UTF-8": 1,
        f"line has no valid Flickr30K_ID: {shown('1' * 100)}": 1,        # cut in length
        "line has no valid Flickr30K_ID: True": 1,
        "hypothesis: text is not a string: dict": 1,
        "entailment label ['entailment'] is not one of entailment, neutral, contradiction": 1,
        "hypothesis longer than 10000 characters": 1,
        "malformed JSON line: not an object": 1}
    assert query(wh, "SELECT id, label FROM entailment") == [("snli-ve:p0", "neutral")]
