"""One test per kind of bad input: the bad record becomes a `rejects` row with its exact reason,
the good records next to it are accepted, and read == accepted + rejected. A wholly unreadable
input file is an InputError naming the file, and nothing is written."""
import io
import json

import pytest
from PIL import Image

from warehouse.ingest.build import ingest
from warehouse.ingest.sources import InputError
from warehouse.store import Warehouse


@pytest.fixture
def data(tmp_path, make_image):
    """A data folder holding one good image, good.png (32x24)."""
    folder = tmp_path / "data"
    make_image(folder / "good.png", size=(32, 24))
    return folder


def ingest_tsv(tmp_path, folder, rows: list[bytes], **kw):
    table = folder / "captions.tsv"
    table.write_bytes(b"".join(r + b"\n" for r in rows))
    wh = tmp_path / "wh"
    return wh, ingest("tsv", source=table, warehouse=wh, **kw)


def ingest_jsonl(tmp_path, folder, lines: list, **kw):
    (folder / "captions.jsonl").write_bytes(b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines))
    wh = tmp_path / "wh"
    return wh, ingest("folder", source=folder, warehouse=wh, **kw)


def assert_only(wh, r, rejects, query, reason, good_images=1, good_captions=1):
    """Exactly one reject, with this reason; the good records are in; the counts add up."""
    assert r.balanced
    assert r.rejected == 1
    assert rejects(wh) == {reason: 1}
    assert query(wh, "SELECT count(*) FROM images") == [(good_images,)]
    assert query(wh, "SELECT count(*) FROM captions") == [(good_captions,)]


GOOD_ROW = b"a good image\tgood.png"


# ---- image files ------------------------------------------------------------------------------
def test_missing_image_file(tmp_path, data, rejects, query):
    wh, r = ingest_tsv(tmp_path, data, [GOOD_ROW, b"gone\tmissing.png"])
    # the caption of the rejected image is rejected at merge time as well
    assert r.balanced and r.rejected == 2
    assert rejects(wh) == {"missing image file": 1, "refers to an unknown or rejected image": 1}
    assert query(wh, "SELECT id FROM images") == [("tsv:good.png",)]
    assert query(wh, "SELECT text FROM captions") == [("a good image",)]


def test_image_path_is_a_directory(tmp_path, data, rejects, query):
    # tests run as root, so a chmod 000 file would still be readable: a folder is what is real
    (data / "folder.png").mkdir()
    wh, r = ingest_jsonl(tmp_path, data, [{"image": "good.png", "caption": "fine"},
                                          {"image": "folder.png", "caption": []}])
    assert_only(wh, r, rejects, query, "image path is a directory")


def test_file_that_is_not_an_image(tmp_path, data, rejects, query):
    (data / "notes.jpg").write_bytes(b"these are my holiday notes, not a JPEG\n" * 10)
    wh, r = ingest_jsonl(tmp_path, data, [{"image": "good.png", "caption": "fine"},
                                          {"image": "notes.jpg", "caption": []}])
    assert_only(wh, r, rejects, query, "not an image")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image(tmp_path, data, rejects, query, fmt):
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, format=fmt)
    whole = buf.getvalue()
    (data / "cut.img").write_bytes(whole[: len(whole) // 2])
    wh, r = ingest_jsonl(tmp_path, data, [{"image": "good.png", "caption": "fine"},
                                          {"image": "cut.img", "caption": []}])
    assert r.balanced and r.rejected == 1
    (reason, n), = rejects(wh).items()
    assert reason.startswith("truncated or corrupt image: ") and n == 1
    assert query(wh, "SELECT id FROM images") == [("folder:good.png",)]


def test_decompression_bomb(tmp_path, data, make_image, rejects, query):
    make_image(data / "big.png", size=(20, 20))
    (data / "good.png").unlink()
    make_image(data / "good.png", size=(10, 10))       # exactly at the limit: accepted
    wh, r = ingest_jsonl(tmp_path, data, [{"image": "good.png", "caption": "fine"},
                                          {"image": "big.png", "caption": []}],
                         max_image_pixels=100)
    assert_only(wh, r, rejects, query,
                "image too large: 20x20 pixels exceeds the limit of 100")


# ---- boxes ------------------------------------------------------------------------------------
def test_box_outside_the_image(tmp_path, data, rejects, query):
    wh, r = ingest_jsonl(tmp_path, data, [
        {"image": "good.png", "caption": "fine",
         "regions": [{"box": [0, 0, 32, 24], "label": "all"},
                     {"box": [10, 10, 50, 20], "label": "too wide"}]}])
    assert_only(wh, r, rejects, query, "box outside the image")
    assert query(wh, "SELECT label, x1, y1, x2, y2 FROM regions") == [("all", 0, 0, 32, 24)]


def test_box_of_zero_area(tmp_path, data, rejects, query):
    wh, r = ingest_jsonl(tmp_path, data, [
        {"image": "good.png", "caption": "fine",
         "regions": [{"box": [1, 1, 5, 5], "label": "ok"},
                     {"box": [5, 5, 5, 10], "label": "line"}]}])
    assert_only(wh, r, rejects, query, "box has zero area: [5, 5, 5, 10]")
    assert query(wh, "SELECT label FROM regions") == [("ok",)]


# ---- text -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", "   \t "])
def test_empty_caption(tmp_path, data, rejects, query, text):
    wh, r = ingest_jsonl(tmp_path, data, [{"image": "good.png", "caption": ["fine", text]}])
    assert_only(wh, r, rejects, query, "empty caption or question text")


def test_caption_not_utf8_in_tsv(tmp_path, data, rejects, query):
    wh, r = ingest_tsv(tmp_path, data, [GOOD_ROW, b"na\xefve caf\xe9\tgood.png"])
    assert_only(wh, r, rejects, query, "text is not valid UTF-8")
    assert query(wh, "SELECT text FROM captions") == [("a good image",)]


def test_caption_lone_surrogate_in_jsonl(tmp_path, data, rejects, query):
    wh, r = ingest_jsonl(tmp_path, data, [
        b'{"image": "good.png", "caption": ["fine", "bad \\udc80 text"]}'])
    assert_only(wh, r, rejects, query, "text is not valid UTF-8")
    assert query(wh, "SELECT text FROM captions") == [("fine",)]


def test_line_not_utf8_in_jsonl(tmp_path, data, make_image, rejects, query):
    make_image(data / "two.png")
    wh, r = ingest_jsonl(tmp_path, data, [{"image": "good.png", "caption": "fine"},
                                          b'{"image": "two.png", "caption": "caf\xe9"}'])
    assert_only(wh, r, rejects, query, "line is not valid UTF-8")


# ---- ids and references -----------------------------------------------------------------------
def test_duplicate_ids(tmp_path, data, rejects, query):
    wh, r = ingest_tsv(tmp_path, data, [GOOD_ROW, GOOD_ROW])
    assert_only(wh, r, rejects, query, "duplicate id")
    assert query(wh, "SELECT record_ref FROM rejects") == [("line 2",)]


def test_annotation_for_unknown_image(tmp_path, data, rejects, query):
    wh, r = ingest_jsonl(tmp_path, data, [{"image": "good.png", "caption": "fine"}])
    preds = tmp_path / "predictions.tsv"
    preds.write_text("folder:good.png\t" + json.dumps(
                         {"objects": [{"class": "box", "conf": 0.9, "rect": [0, 0, 8, 8]}]})
                     + "\nfolder:other.png\t" + json.dumps(
                         {"objects": [{"class": "box", "conf": 0.9, "rect": [0, 0, 8, 8]}]})
                     + "\n")
    r = ingest("vinvl-predictions", source=preds, warehouse=wh)
    assert r.balanced and (r.read, r.new, r.rejected) == (2, 1, 1)
    assert rejects(wh) == {"refers to an unknown or rejected image": 1}
    assert query(wh, "SELECT image_id, label FROM regions") == [("folder:good.png", "box")]


# ---- format -----------------------------------------------------------------------------------
def test_malformed_json_line(tmp_path, data, rejects, query):
    wh, r = ingest_jsonl(tmp_path, data, [{"image": "good.png", "caption": "fine"},
                                          b'{"image": "good.png", "caption": '])
    assert r.balanced and r.rejected == 1
    (reason, n), = rejects(wh).items()
    assert reason.startswith("malformed JSON line: Expecting value") and n == 1
    assert query(wh, "SELECT count(*) FROM captions") == [(1,)]


@pytest.mark.parametrize("path, reason", [
    ("../outside.png", "image path escapes the data root: ../outside.png"),
    ("sub/../../outside.png", "image path escapes the data root: sub/../../outside.png"),
])
def test_image_path_escaping_the_root(tmp_path, data, make_image, rejects, query, path, reason):
    make_image(tmp_path / "outside.png")        # exists, but must not be read
    wh, r = ingest_tsv(tmp_path, data, [GOOD_ROW, b"sneaky\t" + path.encode()])
    assert_only(wh, r, rejects, query, reason)


def test_absolute_image_path(tmp_path, data, make_image, rejects, query):
    outside = make_image(tmp_path / "outside.png")
    wh, r = ingest_jsonl(tmp_path, data, [{"image": "good.png", "caption": "fine"},
                                          {"image": str(outside), "caption": "sneaky"}])
    assert_only(wh, r, rejects, query,
                f"image path escapes the data root (absolute path): {outside}")


# ---- whole files ------------------------------------------------------------------------------
def assert_nothing_written(wh):
    assert Warehouse(wh).current().version == 0
    assert not list(wh.rglob("*.parquet"))


def test_captions_file_is_a_directory(tmp_path, data):
    (data / "captions.jsonl").mkdir()
    wh = tmp_path / "wh"
    with pytest.raises(InputError, match=str(data / "captions.jsonl")):
        ingest("folder", source=data, warehouse=wh)
    assert_nothing_written(wh)


def test_binary_garbage_table(tmp_path, data):
    table = data / "captions.tsv"
    table.write_bytes(bytes(range(256)) * 64)
    wh = tmp_path / "wh"
    with pytest.raises(InputError, match="captions.tsv"):
        ingest("tsv", source=table, warehouse=wh)
    assert_nothing_written(wh)


def test_garbage_jsonl_without_nul_bytes(tmp_path, data):
    # no NUL bytes, so it passes the binary sniff; every line fails, which is an input error too
    (data / "captions.jsonl").write_bytes(bytes(range(128, 256)) * 8 + b"\n{oops\n")
    wh = tmp_path / "wh"
    with pytest.raises(InputError, match="captions.jsonl"):
        ingest("folder", source=data, warehouse=wh)
    assert_nothing_written(wh)
