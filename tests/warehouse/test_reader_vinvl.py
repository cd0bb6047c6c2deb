"""VinVL predictions.tsv: detector regions attached to images already in the warehouse."""
import json

import pytest

from warehouse.ingest.build import ingest
from warehouse.ingest.emitter import stable_id
from warehouse.ingest.readers.vinvl_predictions import image_id_for
from warehouse.ingest.sources import InputError


def prediction(key, objects, h=48, w=64):
    return (f"{key}\t" + json.dumps({"image_h": h, "image_w": w, "num_boxes": len(objects),
                                     "objects": objects})).encode()


@pytest.fixture
def warehouse_with_folder(tmp_path, make_image):
    data = tmp_path / "data"
    make_image(data / "cats" / "1.jpg", size=(64, 48))
    (data / "captions.jsonl").write_text(json.dumps({"image": "cats/1.jpg", "caption": "a cat"}))
    wh = tmp_path / "wh"
    assert ingest("folder", source=data, warehouse=wh).new == 2
    return wh


def test_predictions_attach_to_existing_images(tmp_path, warehouse_with_folder, query, rejects):
    wh = warehouse_with_folder
    cat = {"class": "Cat", "conf": 0.91, "rect": [1.5, 2.0, 30.25, 40.0],
           "attr_labels": ["furry"]}
    mat = {"class": "mat", "conf": 0.5, "rect": [0, 30, 64, 48]}
    preds = tmp_path / "vinvl" / "predictions.tsv"
    preds.parent.mkdir()
    preds.write_bytes(b"\n".join([
        prediction("folder:cats/1.jpg", [cat, mat,
                                         {"class": "sky", "conf": 0.3, "rect": [0, 0, 200, 10]},
                                         {"class": "dot", "conf": 0.2, "rect": [5, 5, 5, 9]}]),
        prediction("folder:missing.jpg", [{"class": "dog", "conf": 0.8, "rect": [0, 0, 4, 4]}]),
        b"folder:cats/1.jpg\t{not json",
        b"no tab on this line",
    ]) + b"\n")
    r = ingest("vinvl-predictions", source=preds, warehouse=wh)
    assert r.balanced
    assert (r.read, r.new, r.rejected) == (7, 2, 5)
    assert query(wh, "SELECT region_id, image_id, dataset, x1, y1, x2, y2, label, source, score "
                     "FROM regions ORDER BY label") == [
        ("vinvl:r:" + stable_id("folder:cats/1.jpg", cat["rect"], "Cat"), "folder:cats/1.jpg",
         "vinvl-predictions", 1.5, 2.0, 30.25, 40.0, "cat", "detector", pytest.approx(0.91)),
        ("vinvl:r:" + stable_id("folder:cats/1.jpg", mat["rect"], "mat"), "folder:cats/1.jpg",
         "vinvl-predictions", 0.0, 30.0, 64.0, 48.0, "mat", "detector", 0.5)]
    assert query(wh, "SELECT count(*) FROM images") == [(1,)]   # no image rows are added
    reasons = rejects(wh)
    assert reasons.pop("refers to an unknown or rejected image") == 1
    assert reasons.pop("box outside the image") == 1
    assert reasons.pop("box has zero area: [5, 5, 5, 9]") == 1
    assert reasons.pop("malformed row") == 1
    (malformed, n), = reasons.items()
    assert malformed.startswith("malformed JSON line: ") and n == 1
    assert query(wh, "SELECT record_ref FROM rejects WHERE reason LIKE 'refers%'") == [
        ("line 2 objects[0]",)]

    assert ingest("vinvl-predictions", source=preds, warehouse=wh).skipped is True


def test_key_to_image_id():
    assert image_id_for("391895") == "coco:391895"
    assert image_id_for("COCO_val2014_000000391895") == "coco:391895"
    assert image_id_for("vg:2345") == "vg:2345"
    assert image_id_for("folder:a/b.jpg") == "folder:a/b.jpg"


def test_unreadable_predictions(tmp_path):
    preds = tmp_path / "predictions.tsv"
    preds.write_bytes(b"garbage\n\xff\xfe\n")
    with pytest.raises(InputError, match="predictions.tsv"):
        ingest("vinvl-predictions", source=preds, warehouse=tmp_path / "wh")
    with pytest.raises(InputError, match="nothere.tsv"):
        ingest("vinvl-predictions", source=tmp_path / "nothere.tsv", warehouse=tmp_path / "wh")
