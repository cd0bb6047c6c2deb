"""Karpathy split reader (dataset_coco.json / dataset_flickr30k.json) through the real pipeline."""
import pytest

from warehouse.ingest.build import ingest
from warehouse.ingest.sources import InputError
from warehouse.store import Warehouse


def _sent(sentid, imgid, raw):
    return {"raw": raw, "tokens": raw.lower().strip(" .").split(), "sentid": sentid,
            "imgid": imgid}


def _coco_file(root, make_image, write_json):
    make_image(root / "val2014" / "COCO_val2014_000000391895.jpg", (64, 48))
    make_image(root / "train2014" / "COCO_train2014_000000522418.jpg", (50, 40))
    make_image(root / "val2014" / "COCO_val2014_000000184613.jpg", (30, 20))
    return write_json(root / "dataset_coco.json", {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg", "imgid": 0,
         "cocoid": 391895, "split": "test", "sentids": [770337, 771687, 772707],
         "sentences": [_sent(770337, 0, "A man with a red helmet on a small moped."),
                       _sent(771687, 0, "   "),                       # empty sentence
                       {"tokens": ["no", "id"], "raw": "No sentid here.", "imgid": 0}]},
        {"filepath": "train2014", "filename": "COCO_train2014_000000522418.jpg", "imgid": 1,
         "cocoid": 522418, "split": "restval", "sentids": [681330],
         "sentences": [_sent(681330, 1, "A woman wearing a net on her head.")]},
        {"filepath": "val2014", "filename": "COCO_val2014_000000184613.jpg", "imgid": 2,
         "cocoid": 184613, "split": "train", "sentids": [],
         "sentences": [_sent(100, 2, "A child holding a flowered umbrella.")]},
        {"filepath": "..", "filename": "secret.jpg", "imgid": 3, "cocoid": 7, "split": "test",
         "sentids": [5], "sentences": [_sent(5, 3, "Escaping the data root.")]},
    ]})


def test_karpathy_coco_all_splits(tmp_path, make_image, write_json, query, rejects):
    src = _coco_file(tmp_path / "coco", make_image, write_json)
    wh = tmp_path / "wh"
    r = ingest("karpathy", source=src, warehouse=wh, workers=1)
    assert r.balanced, r.summary()
    assert r.read == 4 + 6
    assert query(wh, "SELECT id, source_id, split, width, height, path FROM images ORDER BY id"
                 ) == [
        ("karpathy:coco:184613", "coco:184613", "train", 30, 20,
         str(tmp_path / "coco" / "val2014" / "COCO_val2014_000000184613.jpg")),
        ("karpathy:coco:391895", "coco:391895", "test", 64, 48,
         str(tmp_path / "coco" / "val2014" / "COCO_val2014_000000391895.jpg")),
        ("karpathy:coco:522418", "coco:522418", "restval", 50, 40,
         str(tmp_path / "coco" / "train2014" / "COCO_train2014_000000522418.jpg"))]
    assert query(wh, "SELECT id, image_id, text, split FROM captions ORDER BY id") == [
        ("karpathy:c:coco:100", "karpathy:coco:184613", "A child holding a flowered umbrella.",
         "train"),
        ("karpathy:c:coco:681330", "karpathy:coco:522418", "A woman wearing a net on her head.",
         "restval"),
        ("karpathy:c:coco:770337", "karpathy:coco:391895",
         "A man with a red helmet on a small moped.", "test")]
    assert rejects(wh) == {"empty caption or question text": 1, "sentence has no sentid": 1,
                           "image path escapes the data root: ../secret.jpg": 1,
                           "refers to an unknown or rejected image": 1}
    assert query(wh, "SELECT record_ref FROM rejects WHERE reason = "
                     "'empty caption or question text'") == [
        ("dataset_coco.json:images[0].sentences[1]",)]
    assert ingest("karpathy", source=src, warehouse=wh, workers=1).skipped is True


def test_karpathy_split_filter(tmp_path, make_image, write_json, query):
    src = _coco_file(tmp_path / "coco", make_image, write_json)
    wh = tmp_path / "wh"
    r = ingest("karpathy", source=src, warehouse=wh, split="restval", workers=1)
    assert r.balanced and r.read == 2 and r.new == 2 and r.rejected == 0, r.summary()
    assert query(wh, "SELECT id, split FROM images") == [("karpathy:coco:522418", "restval")]
    assert query(wh, "SELECT id FROM captions") == [("karpathy:c:coco:681330",)]


def test_karpathy_flickr_with_image_root_and_no_collision(tmp_path, make_image, write_json,
                                                         query):
    folder = tmp_path / "flickr"
    pixels = tmp_path / "flickr30k-images"
    make_image(pixels / "1000092795.jpg", (40, 30))
    make_image(pixels / "522418.jpg", (20, 20))   # same number as a COCO id
    src = write_json(folder / "dataset_flickr30k.json", {"dataset": "flickr30k", "images": [
        {"filename": "1000092795.jpg", "imgid": 0, "split": "train", "sentids": [0, 1],
         "sentences": [_sent(0, 0, "Two young guys with shaggy hair look at their hands."),
                       _sent(1, 0, "Two friends enjoy time spent together.")]},
        {"filename": "522418.jpg", "imgid": 1, "split": "val", "sentids": [681330],
         "sentences": [_sent(681330, 1, "A dog runs.")]}]})
    wh = tmp_path / "wh"
    ingest("karpathy", source=_coco_file(tmp_path / "coco", make_image, write_json),
           warehouse=wh, workers=1)
    r = ingest("karpathy", source=src, warehouse=wh, image_root=pixels, workers=1)
    assert r.balanced and r.new == 5 and r.existing == 0 and r.rejected == 0, r.summary()
    assert query(wh, "SELECT id, path FROM images WHERE id LIKE 'karpathy:flickr30k:%' "
                     "ORDER BY id") == [
        ("karpathy:flickr30k:1000092795", str(pixels / "1000092795.jpg")),
        ("karpathy:flickr30k:522418", str(pixels / "522418.jpg"))]
    assert query(wh, "SELECT image_id, text FROM captions WHERE id = "
                     "'karpathy:c:flickr30k:681330'") == [("karpathy:flickr30k:522418",
                                                           "A dog runs.")]
    assert query(wh, "SELECT text FROM captions WHERE id = 'karpathy:c:coco:681330'") == [
        ("A woman wearing a net on her head.",)]


def test_karpathy_missing_file_writes_nothing(tmp_path, query):
    wh = tmp_path / "wh"
    with pytest.raises(InputError, match="dataset_flickr8k.json"):
        ingest("karpathy", source=tmp_path / "dataset_flickr8k.json", warehouse=wh)
    assert Warehouse(wh).current().version == 0
    for table in ("images", "captions", "rejects"):
        assert query(wh, f"SELECT count(*) FROM {table}") == [(0,)]


def test_karpathy_not_a_split_file(tmp_path, write_json):
    src = write_json(tmp_path / "dataset_coco.json", [{"filename": "x.jpg"}])
    with pytest.raises(InputError, match="not a Karpathy split file"):
        ingest("karpathy", source=src, warehouse=tmp_path / "wh")
    assert Warehouse(tmp_path / "wh").current().version == 0
