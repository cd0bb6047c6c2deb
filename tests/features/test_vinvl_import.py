"""VinVL features.tsv import, on fixtures written in VinVL's exact format: `key\\tnum_boxes\\t
base64(float32[num_boxes x 2054])` lines, a features.lineidx of byte offsets, predictions.tsv."""
import base64
import hashlib
import json

import numpy as np
import pytest

from features.load import load_image_features, load_region_features
from features.vinvl_import import DIM, import_vinvl_features
from warehouse.ingest.build import ingest
from warehouse.ingest.emitter import stable_id
from warehouse.ingest.sources import InputError
from warehouse.store import Warehouse

SIZES = {"a.jpg": (64, 48), "b.jpg": (80, 60), "c.jpg": (40, 40), "d.jpg": (32, 32)}


@pytest.fixture
def wh(tmp_path, make_image):
    data = tmp_path / "data"
    for name, size in SIZES.items():
        make_image(data / name, size=size)
    (data / "captions.jsonl").write_text("\n".join(
        json.dumps({"image": name, "caption": f"picture {name}"}) for name in SIZES))
    root = tmp_path / "wh"
    assert ingest("folder", source=data, warehouse=root).balanced
    return root


def boxes_for(rects, size, seed):
    """float32 [n, 2054]: random RoI features, then VinVL's geometry of each pixel rect."""
    w, h = size
    r = np.array(rects, dtype=np.float32)
    norm = r / np.array([w, h, w, h], np.float32)
    geometry = np.concatenate([norm, norm[:, 2:] - norm[:, :2]], axis=1)
    feats = np.random.default_rng(seed).gamma(1.0, 0.5, (len(r), DIM)).astype(np.float32)
    return np.concatenate([feats, geometry], axis=1)


def line(key, boxes=None, num_boxes=None, payload=None):
    if payload is None:
        payload = base64.b64encode(boxes.astype("<f4").tobytes())
    n = len(boxes) if num_boxes is None else num_boxes
    return key.encode() + b"\t" + str(n).encode() + b"\t" + payload + b"\n"


def write_tsv(path, lines, lineidx=True):
    path.write_bytes(b"".join(lines))
    if lineidx:
        offsets = np.cumsum([0] + [len(x) for x in lines[:-1]])
        path.with_suffix(".lineidx").write_text("".join(f"{o}\n" for o in offsets))
    return path


RECTS = {"a.jpg": [[1, 2, 30, 40], [10, 0, 64, 48], [5.5, 6.25, 20, 21]],
         "b.jpg": [[0, 0, 80, 60], [40, 30, 70, 55]]}


@pytest.fixture
def tsv(tmp_path):
    a = boxes_for(RECTS["a.jpg"], SIZES["a.jpg"], 1)
    b = boxes_for(RECTS["b.jpg"], SIZES["b.jpg"], 2)
    c = boxes_for([[0, 0, 10, 10], [5, 5, 30, 30]], SIZES["c.jpg"], 3)
    return write_tsv(tmp_path / "features.tsv", [
        line("folder:a.jpg", a),
        line("folder:b.jpg", b),
        line("folder:missing.jpg", c),                        # image not in the warehouse
        line("folder:d.jpg", num_boxes=2, payload=b"@@not base64@@"),
        line("folder:a.jpg", a),                              # the same image again
        line("folder:c.jpg", c, num_boxes=3),                 # 3 x 2054 floats claimed, 2 given
    ]), {"a.jpg": a, "b.jpg": b}


def test_import_into_feature_set(wh, tsv, query, rejects):
    path, boxes = tsv
    report = import_vinvl_features(wh, path, shard_lines=4)
    assert {k: report[k] for k in ("lines", "images", "regions", "rejected", "already_done",
                                   "shards")} == {"lines": 6, "images": 2, "regions": 5,
                                                  "rejected": 4, "already_done": 0, "shards": 2}

    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert query(wh, "SELECT id, kind, backbone, weights_sha256, box_source, dim, dtype, "
                     "max_regions, grid FROM feature_sets") == [
        (report["feature_set"], "imported", "vinvl", sha, "imported", 2048, "float16", 3, 0)]

    regions = load_region_features(wh, report["feature_set"])
    assert list(regions.image_ids) == ["folder:a.jpg", "folder:b.jpg"]
    assert list(regions.offsets) == [0, 3, 5]
    assert list(regions.region_id[:3]) == [f"folder:a.jpg#vinvl{k}" for k in range(3)]
    expected = np.concatenate([boxes["a.jpg"], boxes["b.jpg"]])
    np.testing.assert_array_equal(regions.vectors.numpy(), expected[:, :DIM].astype(np.float16))
    np.testing.assert_array_equal(regions.geometry, expected[:, DIM:])
    # pixel boxes come back from the geometry and the warehouse's image size
    got = query(wh, "SELECT x1, y1, x2, y2 FROM region_features ORDER BY image_id, region_id")
    np.testing.assert_allclose(got, RECTS["a.jpg"] + RECTS["b.jpg"], atol=1e-4)

    images = load_image_features(wh, report["feature_set"])
    a_mean = boxes["a.jpg"][:, :DIM].mean(axis=0)
    np.testing.assert_allclose(images.vectors[list(images.image_ids).index("folder:a.jpg")]
                               .float().numpy(), a_mean, rtol=1e-3)

    reasons = rejects(wh)
    assert reasons.pop("refers to an unknown image: folder:missing.jpg is not in the warehouse") == 1
    assert reasons.pop("duplicate image: folder:a.jpg already on line 1") == 1
    assert reasons.pop("num_boxes x 2054 float32 does not match the data: 3 boxes need 24648 "
                       "bytes, decoded 16432") == 1
    (b64, n), = reasons.items()
    assert b64.startswith("features are not valid base64") and n == 1
    assert query(wh, "SELECT record_ref FROM rejects WHERE reason LIKE 'refers%'") == [("line 3",)]

    # rerun: every line is done (imported or rejected), nothing is written
    version = Warehouse(wh).current().version
    again = import_vinvl_features(wh, path)
    assert (again["images"], again["rejected"], again["already_done"]) == (0, 0, 6)
    assert Warehouse(wh).current().version == version


def test_predictions_give_region_ids_labels_and_boxes(wh, tsv, tmp_path, query, rejects):
    path, boxes = tsv
    objects = {name: [{"class": cls, "conf": conf, "rect": rect} for rect, cls, conf in
                      zip(RECTS[name], ["Dog", "grass", "ball"], [0.9, 0.7, 0.5])]
               for name in RECTS}
    preds = tmp_path / "predictions.tsv"
    preds.write_text("\n".join(
        f"folder:{name}\t" + json.dumps({"image_w": SIZES[name][0], "image_h": SIZES[name][1],
                                         "num_boxes": len(objs), "objects": objs})
        for name, objs in [("a.jpg", objects["a.jpg"]),
                           ("b.jpg", objects["b.jpg"][::-1])]) + "\n")  # b in the wrong order
    assert ingest("vinvl-predictions", source=preds, warehouse=wh).new == 5

    report = import_vinvl_features(wh, path, predictions_tsv=preds, dtype="float32")
    assert (report["images"], report["regions"]) == (1, 3)
    ids = ["vinvl:r:" + stable_id("folder:a.jpg", o["rect"], o["class"]) for o in objects["a.jpg"]]
    # the vectors join the detector regions the predictions ingest wrote
    assert query(wh, "SELECT f.region_id, f.label, f.score, f.x1, f.y2, r.label FROM "
                     "region_features f JOIN regions r USING (region_id) ORDER BY f.score DESC") \
        == [(ids[0], "dog", pytest.approx(0.9), 1.0, 40.0, "dog"),
            (ids[1], "grass", pytest.approx(0.7), 10.0, 48.0, "grass"),
            (ids[2], "ball", pytest.approx(0.5), 5.5, 21.0, "ball")]
    regions = load_region_features(wh, report["feature_set"])
    np.testing.assert_array_equal(regions.vectors.numpy(), boxes["a.jpg"][:, :DIM])
    assert query(wh, "SELECT dtype, box_source LIKE 'imported+predictions:%' FROM feature_sets "
                     "WHERE id = ?", [report["feature_set"]]) == [("float32", True)]
    assert [r for r in rejects(wh) if "geometry" in r] == [
        "predictions.tsv boxes do not match the features' geometry (off by 0.500 of the image "
        "size): different image order or sizes"]


def test_bad_lineidx_is_a_clear_error(wh, tsv, tmp_path):
    path, _ = tsv
    index = path.with_suffix(".lineidx")
    offsets = [int(x) for x in index.read_text().split()]
    shifted = tmp_path / "shifted.lineidx"
    shifted.write_text("".join(f"{o + 3 * (o > 0)}\n" for o in offsets))
    with pytest.raises(InputError, match=r"entry 2 \(offset \d+\) does not point at the start "
                                         "of a line"):
        import_vinvl_features(wh, path, lineidx=shifted)
    skipping = tmp_path / "skipping.lineidx"
    skipping.write_text("".join(f"{o}\n" for o in offsets[:1] + offsets[2:]))
    with pytest.raises(InputError, match="skips a line after entry 1"):
        import_vinvl_features(wh, path, lineidx=skipping)
    words = tmp_path / "words.lineidx"
    words.write_text("0\nfoo\n")
    with pytest.raises(InputError, match="line 2 is not a byte offset"):
        import_vinvl_features(wh, path, lineidx=words)
    assert Warehouse(wh).files("region_features") == []


def test_interrupted_import_resumes_without_duplicates(wh, tsv, monkeypatch, query):
    path, _ = tsv
    index = path.with_suffix(".lineidx")
    index.unlink()  # no lineidx: offsets are found by reading the file
    publish = Warehouse.publish
    calls = {"n": 0}

    def dies_on_third_shard(self, staged, build, check=None):
        if build["kind"] == "vinvl-features":
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt("killed")
        return publish(self, staged, build, check=check)

    monkeypatch.setattr(Warehouse, "publish", dies_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        import_vinvl_features(wh, path, shard_lines=2)
    assert query(wh, "SELECT count(*) FROM image_features") == [(2,)]
    monkeypatch.setattr(Warehouse, "publish", publish)
    report = import_vinvl_features(wh, path, shard_lines=2)
    assert (report["already_done"], report["images"], report["rejected"]) == (4, 0, 2)
    assert query(wh, "SELECT count(*), count(DISTINCT region_id) FROM region_features") == [(5, 5)]
    assert query(wh, "SELECT count(*), count(DISTINCT id) FROM rejects") == [(4, 4)]
