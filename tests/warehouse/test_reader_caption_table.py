"""Caption tables (Conceptual Captions style TSV/CSV with local image paths) through the real
ingest pipeline."""
import pytest

from warehouse.ingest.build import ingest
from warehouse.ingest.emitter import stable_id
from warehouse.ingest.sources import InputError
from warehouse.store import Warehouse


def cap_id(path, text):
    return "tsv:c:" + stable_id(path, text)


def test_tsv_without_header(tmp_path, make_image, query, rejects):
    data = tmp_path / "cc"
    make_image(data / "a.jpg", size=(32, 24))
    make_image(data / "sub" / "b.png", size=(40, 30), color=(0, 0, 200))
    table = data / "train.tsv"
    table.write_bytes(
        b"a red square\ta.jpg\n"
        b"the same   image again\t./a.jpg\n"       # same image, other spelling of its path
        b"\n"                                       # blank lines are not records
        b"a blue square\tsub/b.png\n"
        b"   \ta.jpg\n"                             # whitespace caption
        b"a remote one\thttp://example.com/x.jpg\n"
        b"three\tfields\there\n"
        b"only one field\n")
    wh = tmp_path / "wh"
    r = ingest("tsv", source=table, warehouse=wh, split="train")
    assert r.balanced
    assert r.read == 2 + 3 + 4 and r.new == 5 and r.rejected == 4

    assert query(wh, "SELECT id, source_id, split, width, height, path FROM images "
                     "ORDER BY id") == [
        ("tsv:a.jpg", "a.jpg", "train", 32, 24, str(data / "a.jpg")),
        ("tsv:sub/b.png", "sub/b.png", "train", 40, 30, str(data / "sub" / "b.png"))]
    assert query(wh, "SELECT id, image_id, text, split, box FROM captions "
                     "ORDER BY text") == sorted([
        (cap_id("a.jpg", "a red square"), "tsv:a.jpg", "a red square", "train", None),
        (cap_id("a.jpg", "the same image again"), "tsv:a.jpg", "the same image again", "train",
         None),
        (cap_id("sub/b.png", "a blue square"), "tsv:sub/b.png", "a blue square", "train", None),
    ], key=lambda row: row[2])
    assert rejects(wh) == {"empty caption or question text": 1,
                           "remote image URL: download images first": 1,
                           "malformed row": 2}
    assert query(wh, "SELECT record_ref FROM rejects WHERE reason = 'malformed row' "
                     "ORDER BY record_ref") == [("line 7",), ("line 8",)]
    assert query(wh, "SELECT source_file, record_ref FROM rejects "
                     "WHERE reason LIKE 'remote%'") == [("train.tsv", "line 6")]

    again = ingest("tsv", source=table, warehouse=wh, split="train")
    assert again.skipped is True


def test_csv_with_header_any_column_order(tmp_path, make_image, query, rejects):
    data = tmp_path / "d"
    make_image(data / "img" / "1.jpg", size=(16, 16))
    make_image(data / "img" / "2.jpg", size=(20, 10))
    table = data / "pairs.csv"
    table.write_text('id,URL,Caption\n'
                     '7,img/1.jpg,"a cat, sitting"\n'
                     '8,img/2.jpg,"she said ""hi"""\n'
                     '9,img/2.jpg\n')                       # too few fields
    wh = tmp_path / "wh"
    r = ingest("tsv", source=table, warehouse=wh)
    assert r.balanced and r.new == 4 and r.rejected == 1
    assert query(wh, "SELECT image_id, text, split FROM captions ORDER BY image_id") == [
        ("tsv:img/1.jpg", "a cat, sitting", None), ("tsv:img/2.jpg", 'she said "hi"', None)]
    assert query(wh, "SELECT id FROM captions WHERE image_id = 'tsv:img/1.jpg'") == [
        (cap_id("img/1.jpg", "a cat, sitting"),)]
    assert rejects(wh) == {"malformed row": 1}


def test_image_root_and_invalid_utf8_caption(tmp_path, make_image, query, rejects):
    images = tmp_path / "images"
    make_image(images / "x.png", size=(8, 8))
    table = tmp_path / "meta" / "cc.tsv"
    table.parent.mkdir()
    table.write_bytes(b"caption\timage\n"
                      b"a caf\xe9 sign\tx.png\n"          # latin-1 byte: caption rejected alone
                      b"a small square\tx.png\n")
    wh = tmp_path / "wh"
    r = ingest("tsv", source=table, warehouse=wh, image_root=images)
    assert r.balanced
    assert query(wh, "SELECT id, path FROM images") == [("tsv:x.png", str(images / "x.png"))]
    assert query(wh, "SELECT text FROM captions") == [("a small square",)]
    assert rejects(wh) == {"text is not valid UTF-8": 1}
    assert query(wh, "SELECT record_ref, raw FROM rejects") == [
        ("line 2", "a caf\\xe9 sign\tx.png")]


def test_caption_ids_do_not_depend_on_row_order(tmp_path, make_image, query):
    data = tmp_path / "d"
    make_image(data / "a.jpg")
    make_image(data / "b.jpg")
    rows = [b"one\ta.jpg\n", b"two\tb.jpg\n", b"three\ta.jpg\n"]
    (data / "x.tsv").write_bytes(b"".join(rows))
    (data / "y.tsv").write_bytes(b"".join(reversed(rows)))
    ingest("tsv", source=data / "x.tsv", warehouse=tmp_path / "w1")
    ingest("tsv", source=data / "y.tsv", warehouse=tmp_path / "w2")
    sql = "SELECT id, image_id, text FROM captions ORDER BY id"
    assert query(tmp_path / "w1", sql) == query(tmp_path / "w2", sql)
    assert len(query(tmp_path / "w1", sql)) == 3


def test_header_only_or_folder_is_an_input_error(tmp_path):
    table = tmp_path / "empty.tsv"
    table.write_text("caption\turl\n")
    with pytest.raises(InputError, match="empty.tsv"):
        ingest("tsv", source=table, warehouse=tmp_path / "wh")
    with pytest.raises(InputError, match=str(tmp_path)):
        ingest("tsv", source=tmp_path, warehouse=tmp_path / "wh")
    with pytest.raises(InputError, match="nope.tsv"):
        ingest("tsv", source=tmp_path / "nope.tsv", warehouse=tmp_path / "wh")
    assert Warehouse(tmp_path / "wh").current().version == 0
