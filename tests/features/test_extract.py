"""Region feature extraction into the warehouse: what is stored, reruns, resumes, bad input."""
import json
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from features import extract
from features.backbone import load_backbone
from features.extract import (
    encode_regions,
    extract_features,
    extract_shard,
    pending_images,
    plan_feature_set,
    register_feature_set,
)
from features.feature_sets import (
    FeatureSetMismatch,
    FeatureSetSpec,
    check_compatible,
    list_feature_sets,
    require_feature_set,
)
from features.geometry import to_input_pixels
from features.load import load_image_features, load_region_features
from warehouse.ingest.build import ingest
from warehouse.publish import write_part
from warehouse.schemas import REGIONS
from warehouse.store import Warehouse

TINY = dict(backbone="mvp-tiny", progress=False)


def _shapes(tmp_path, n=6):
    wh = tmp_path / "wh"
    ingest("shapes", tmp_path / "img", wh, n_images=n, workers=1)
    return wh


def _folder(tmp_path, images: dict, regions: dict | None = None):
    """A `folder` dataset: images {name: (w, h)}, regions {name: [(box, label)]}."""
    root = tmp_path / "data"
    lines = []
    for name, size in images.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (40 + 20 * len(lines), 120, 200)).save(root / name)
        rec = {"image": name, "caption": f"picture {name}"}
        if regions and name in regions:
            rec["regions"] = [{"box": b, "label": lab} for b, lab in regions[name]]
        lines.append(json.dumps(rec))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    ingest("folder", root, tmp_path / "wh")
    return tmp_path / "wh"


def _count(query, wh, sql, params=None):
    return query(wh, sql, params)[0][0]


def test_every_image_gets_its_regions_geometry_and_vectors(tmp_path, query):
    wh = _shapes(tmp_path)
    result = extract_features(wh, dtype="float32", batch_size=4, **TINY)
    n_regions = _count(query, wh, "SELECT count(*) FROM regions")
    assert (result["images"], result["regions"], result["rejected"]) == (6, n_regions, 0)
    fs = result["feature_set"]
    # the stored boxes and geometry are the regions table's, normalised by the image size
    rows = query(wh, """
        SELECT max(abs(f.geometry[1] - r.x1 / i.width) + abs(f.geometry[4] - r.y2 / i.height)
                   + abs(f.geometry[5] - (r.x2 - r.x1) / i.width)),
               count(*), bool_and(f.x1 = r.x1 AND f.y2 = r.y2 AND f.label = r.label)
        FROM region_features f JOIN regions r USING (region_id) JOIN images i ON i.id = r.image_id
        WHERE f.feature_set = ?""", [fs])
    assert rows[0][0] < 1e-6 and rows[0][1] == n_regions and rows[0][2]

    # a stored region vector is the backbone's RoIAlign vector for that box, recomputed here
    loaded = load_region_features(wh, fs)
    assert loaded.vectors.shape == (n_regions, 32) and loaded.vectors.dtype == torch.float32
    assert len(loaded.image_ids) == 6 and loaded.offsets[-1] == n_regions
    k = 2
    image_id = loaded.image_ids[k]
    sl = slice(loaded.offsets[k], loaded.offsets[k + 1])
    assert (loaded.image_id[sl] == image_id).all()
    path, w, h = query(wh, "SELECT path, width, height FROM images WHERE id = ?", [image_id])[0]
    stored = {r[0]: r[1:] for r in query(wh, "SELECT region_id, x1, y1, x2, y2 FROM "
                                             "region_features WHERE feature_set = ? AND "
                                             "image_id = ?", [fs, image_id])}
    boxes = np.array([stored[r] for r in loaded.region_id[sl]], dtype=np.float32)
    bb = load_backbone("mvp-tiny")
    pixels = bb.preprocess(Image.open(path).convert("RGB")).unsqueeze(0)
    expected, glob = encode_regions(bb, pixels, [torch.from_numpy(to_input_pixels(boxes, w, h,
                                                                                  64))])
    assert torch.allclose(loaded.vectors[sl], expected, atol=1e-5)
    images = load_image_features(wh, fs, [image_id])
    assert list(images.image_ids) == [image_id]
    assert torch.allclose(images.vectors, glob, atol=1e-5)

    spec = require_feature_set(wh, fs)
    assert (spec.kind, spec.backbone, spec.pretrained, spec.dim, spec.image_size, spec.dtype,
            spec.code_version) == ("extracted", "mvp-tiny", "none", 32, 64, "float32",
                                   extract.EXTRACT_CODE_VERSION)
    build = Warehouse(wh).current().builds[-1]
    assert build["kind"] == "features" and build["params"]["feature_set"] == fs
    assert build["counts"]["new"] == 6 and build["counts"]["regions"] == n_regions


def test_rerun_extracts_nothing_and_new_images_only(tmp_path, query):
    wh = _shapes(tmp_path, n=5)
    first = extract_features(wh, shard_size=2, **TINY)
    assert (first["images"], first["shards"]) == (5, 3)
    version = Warehouse(wh).current().version
    again = extract_features(wh, shard_size=2, **TINY)
    assert (again["pending"], again["images"], again["shards"]) == (0, 0, 0)
    assert Warehouse(wh).current().version == version  # nothing published, not even the row
    ingest("shapes", tmp_path / "img", wh, n_images=8, workers=1)  # 3 more images
    more = extract_features(wh, shard_size=2, **TINY)
    assert (more["feature_set"], more["images"]) == (first["feature_set"], 3)
    assert query(wh, "SELECT count(*), count(DISTINCT region_id), count(DISTINCT image_id) "
                     "FROM region_features")[0] == (first["regions"] + more["regions"],) * 2 + (8,)
    assert _count(query, wh, "SELECT count(*) FROM image_features") == 8
    assert _count(query, wh, "SELECT count(*) FROM feature_sets") == 1


def test_max_images_is_a_fixed_sample_that_reruns_keep(tmp_path, query):
    wh = _shapes(tmp_path, n=6)
    first = extract_features(wh, max_images=3, **TINY)
    assert first["images"] == 3
    chosen = {r[0] for r in query(wh, "SELECT image_id FROM image_features")}
    assert extract_features(wh, max_images=3, **TINY)["images"] == 0  # the same 3, not 3 more
    assert extract_features(wh, max_images=5, **TINY)["images"] == 2  # extends the sample
    after = {r[0] for r in query(wh, "SELECT image_id FROM image_features")}
    assert chosen < after and len(after) == 5


def test_images_without_regions_get_a_grid(tmp_path, query):
    wh = _folder(tmp_path, {"wide.png": (48, 32), "boxed.png": (40, 40)},
                 {"boxed.png": [([4, 4, 20, 20], "square")]})
    fs = extract_features(wh, grid=4, **TINY)["feature_set"]
    rows = query(wh, "SELECT region_id, box_source, label, x1, y1, x2, y2, geometry "
                     "FROM region_features WHERE image_id = 'folder:wide.png' ORDER BY x1, y1")
    assert len(rows) == 16
    assert {r[0] for r in rows} == {f"folder:wide.png#grid{k}" for k in range(16)}
    assert {r[1] for r in rows} == {"grid"} and {r[2] for r in rows} == {None}
    cell5 = [r for r in rows if r[0].endswith("#grid5")][0]  # row 1, column 1
    assert cell5[3:7] == (12, 8, 24, 16)
    assert cell5[7] == pytest.approx([0.25, 0.25, 0.5, 0.5, 0.25, 0.25])
    assert query(wh, "SELECT box_source, label FROM region_features "
                     "WHERE image_id = 'folder:boxed.png'") == [("annotation", "square")]
    assert len(load_region_features(wh, fs, ["folder:wide.png"])) == 16


def test_region_cap_keeps_annotations_then_highest_scores(tmp_path, query):
    wh = _folder(tmp_path, {"a.png": (64, 64)}, {"a.png": [([40, 40, 60, 60], "cat")]})
    preds = tmp_path / "predictions.tsv"
    objects = [{"class": c, "conf": s, "rect": r} for c, s, r in [
        ("dog", 0.3, [0, 0, 10, 10]), ("car", 0.9, [10, 10, 30, 30]),
        ("cup", 0.6, [5, 30, 25, 50]), ("hat", 0.1, [1, 1, 5, 5])]]
    preds.write_text("folder:a.png\t" + json.dumps({"objects": objects}) + "\n")
    ingest("vinvl-predictions", preds, wh)
    extract_features(wh, max_regions=3, grid=1, **TINY)
    rows = query(wh, "SELECT label, box_source, score FROM region_features ORDER BY label")
    assert [(r[0], r[1]) for r in rows] == [("car", "detector"), ("cat", "annotation"),
                                            ("cup", "detector")]


def test_bad_images_are_rejected_with_reasons_not_fatal(tmp_path, query, rejects):
    wh = _shapes(tmp_path, n=6)
    paths = [r[0] for r in query(wh, "SELECT path FROM images ORDER BY id")]
    open(paths[0], "wb").write(b"\x89PNG\r\n\x1a\n not really")       # no longer decodes
    os.remove(paths[1])                                                # gone
    Image.new("RGB", (50, 40)).save(paths[2])                          # replaced, other size
    result = extract_features(wh, **TINY)
    assert (result["images"], result["rejected_images"], result["rejected"]) == (3, 3, 3)
    reasons = rejects(wh)
    assert reasons == {"image file is missing at feature time": 1,
                       "image size changed since ingest: recorded 128x128, file is 50x40": 1,
                       **{r: 1 for r in reasons if r.startswith("image no longer decodes")}}
    assert len(reasons) == 3
    spec = require_feature_set(wh, result["feature_set"])
    assert pending_images(wh, spec) == []  # rejected images are done: a rerun does not retry
    assert extract_features(wh, **TINY)["images"] == 0
    assert _count(query, wh, "SELECT count(*) FROM rejects") == 3


def test_box_outside_the_image_is_rejected_and_an_overhanging_box_clipped(tmp_path, query):
    wh = _folder(tmp_path, {"a.png": (32, 24), "b.png": (32, 24)})
    # boxes ingest would have refused or clipped, as older data or another writer might hold
    # them: one overhanging image a's right edge, one entirely right of image b (its only box)
    store = Warehouse(wh)
    rows = [{"region_id": rid, "image_id": iid, "dataset": "folder", "x1": x1, "y1": y1,
             "x2": x2, "y2": y2, "label": label, "attributes": None, "source": "detector",
             "score": 0.8, "ingest_id": "test"}
            for rid, iid, (x1, y1, x2, y2), label in [
                ("edge:1", "folder:a.png", (20, 4, 35.5, 20), "edge"),
                ("bad:1", "folder:b.png", (40, 2, 60, 10), "ghost")]]
    with store.staging("test-regions") as folder:
        part = folder / "test-regions.parquet"
        write_part(pa.Table.from_pylist(rows, schema=REGIONS), part)
        store.publish({"regions": [part]}, {"kind": "test"})
    result = extract_features(wh, grid=2, **TINY)
    assert (result["images"], result["clipped_boxes"], result["rejected"]) == (2, 1, 1)
    assert query(wh, "SELECT x1, y1, x2, y2, geometry[3] FROM region_features "
                     "WHERE label = 'edge'") == [(20, 4, 32, 20, 1.0)]
    assert query(wh, "SELECT record_ref, reason FROM rejects") == [
        ("bad:1", "box outside the image: [40.0, 2.0, 60.0, 10.0] in 32x24")]
    # with no usable box left, image b falls back to the grid
    assert query(wh, "SELECT count(*), min(box_source) FROM region_features "
                     "WHERE image_id = 'folder:b.png'") == [(4, "grid")]


RUN = ("import sys; from features.extract import extract_features; "
       "extract_features(sys.argv[1], backbone='mvp-tiny', shard_size=3, progress=False)")


@pytest.mark.slow
@pytest.mark.parametrize("point", ["features-after-publish", "features-before-publish"])
def test_killed_extraction_resumes_without_duplicates(tmp_path, query, point):
    wh = _shapes(tmp_path, n=8)
    proc = subprocess.run([sys.executable, "-c", RUN, str(wh)], capture_output=True,
                          env={**os.environ, "MVP_FAULT": point})
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    done_before = _count(query, wh, "SELECT count(*) FROM image_features")
    assert done_before == (3 if point == "features-after-publish" else 0)
    assert _count(query, wh, "SELECT count(*) FROM feature_sets") == 1

    result = extract_features(wh, shard_size=3, **TINY)
    assert result["images"] == 8 - done_before
    n_regions = _count(query, wh, "SELECT count(*) FROM regions")
    assert query(wh, "SELECT count(*), count(DISTINCT (feature_set, region_id)), "
                     "count(DISTINCT image_id) FROM region_features")[0] == \
        (n_regions, n_regions, 8)
    store = Warehouse(wh)
    live = {p for parts in store.current().tables.values() for p in parts}
    on_disk = {store.relative(p) for p in (wh / "tables").rglob("*.parquet")}
    assert on_disk == live  # the killed run's staged or moved files are gone
    assert not any((wh / "_staging").glob("*"))


def test_publish_guard_drops_images_another_run_published_after_this_one_planned(tmp_path,
                                                                                  query):
    wh = _shapes(tmp_path, n=4)
    spec = plan_feature_set(wh, backbone="mvp-tiny")
    register_feature_set(wh, spec)
    base = Warehouse(wh).current()
    ids = pending_images(wh, spec, version=base.version)
    # another run, planned at the same version, publishes 3 of the 4 images first
    assert extract_shard(wh, spec, ids[:3], base_version=base.version)["images"] == 3
    late = extract._extract(Warehouse(wh), spec, ids, 32, None, base)
    assert (late["published"], late["dropped_images"], late["images"]) == (True, 3, 1)
    assert _count(query, wh, "SELECT count(*) FROM image_features") == 4
    assert extract_shard(wh, spec, ids, base_version=base.version)["images"] == 0  # up front
    assert extract_shard(wh, spec, ids)["images"] == 0  # and against the whole feature set


def test_a_run_skips_images_another_writer_published_during_it(tmp_path, query, monkeypatch):
    wh = _shapes(tmp_path, n=6)
    real, shards, rival = extract._extract, [], []

    def with_a_rival(w, spec, ids, *args):
        shards.append(list(ids))
        result = real(w, spec, ids, *args)
        if not rival:  # after the run's first shard another writer takes the last image
            rival.append(pending_images(w, spec)[-1])
            assert extract_shard(w, spec, rival)["images"] == 1
        return result
    monkeypatch.setattr(extract, "_extract", with_a_rival)
    result = extract_features(wh, shard_size=2, **TINY)
    assert (result["images"], result["shards"]) == (5, 3)
    assert [len(s) for s in shards] == [2, 1, 2, 1]  # the run's 2, the rival's, then 2 and 1
    assert not any(rival[0] in s for s in shards[2:])  # dropped before extraction, not after
    assert query(wh, "SELECT count(*), count(DISTINCT image_id) FROM image_features") == [(6, 6)]


def test_shard_checks_read_only_what_was_committed_since_the_plan(tmp_path, monkeypatch):
    wh = _shapes(tmp_path, n=6)
    spec = plan_feature_set(wh, backbone="mvp-tiny")
    register_feature_set(wh, spec)
    pending = pending_images(wh, spec)
    for shard in (pending[:2], pending[2:4]):  # history the checks must not read again
        extract_shard(wh, spec, shard)
    base = Warehouse(wh).current()
    rest = pending_images(wh, spec, version=base.version)
    assert rest == pending[4:]
    extract_shard(wh, spec, rest[:1], base_version=base.version)  # another writer, meanwhile
    other_part = set(Warehouse(wh).current().tables["image_features"]) - \
        set(base.tables["image_features"])
    seen, real = [], extract.connect
    monkeypatch.setattr(extract, "connect", lambda w, snap=None, **kw: (
        seen.append(snap), real(w, snap, **kw))[1])
    assert extract_shard(wh, spec, rest, base_version=base.version)["images"] == 1
    checked = [s.tables["image_features"] for s in seen if s is not None]
    assert len(checked) == 2  # before the work and at the commit
    assert all(set(parts) == other_part for parts in checked)


def test_a_shard_commits_about_a_gibibyte_of_vectors_whatever_the_batch():
    spec = SimpleNamespace(max_regions=49, dim=512, dtype="float16")  # what the size reads
    assert extract.images_per_commit(spec) == (1 << 30) // (50 * 512 * 2) == 20971
    assert extract.images_per_commit(spec, 1000) == 1  # never zero


def test_feature_sets_never_mix_and_mismatches_are_refused(tmp_path, query):
    wh = _shapes(tmp_path, n=3)
    a = plan_feature_set(wh, backbone="mvp-tiny")
    b = plan_feature_set(wh, backbone="mvp-tiny", image_size=32)
    assert a.id == plan_feature_set(wh, backbone="mvp-tiny").id  # deterministic init + record
    assert len({a.id, b.id, plan_feature_set(wh, backbone="mvp-tiny", grid=2).id,
                plan_feature_set(wh, backbone="mvp-tiny", dtype="float32").id}) == 4

    with pytest.raises(LookupError, match="register_feature_set"):
        extract_shard(wh, a, pending_images(wh, a))
    for spec in (a, b):
        register_feature_set(wh, spec)
        extract_shard(wh, spec, pending_images(wh, spec))
    assert {s.id for s in list_feature_sets(wh)} == {a.id, b.id}
    assert not register_feature_set(wh, a)  # idempotent
    ra, rb = load_region_features(wh, a.id), load_region_features(wh, b.id)
    assert len(ra) == len(rb) == _count(query, wh, "SELECT count(*) FROM regions")
    assert not torch.equal(ra.vectors, rb.vectors)  # 64 px vs 32 px inputs

    with pytest.raises(LookupError, match="registered: "):
        require_feature_set(wh, "0123456789abcdef")
    with pytest.raises(FeatureSetMismatch, match="dim: expected 768"):
        check_compatible(require_feature_set(wh, a.id), dim=768, backbone="mvp-tiny")
    with pytest.raises(FeatureSetMismatch, match=f"id: expected '{b.id}'"):
        check_compatible(a, feature_set=b.id)
    check_compatible(a, feature_set=a.id, dim=32, backbone="mvp-tiny")
    # the stored row is the spec; an altered row is caught by its id
    assert FeatureSetSpec.from_row(a.row()) == a
    with pytest.raises(FeatureSetMismatch, match="altered"):
        FeatureSetSpec.from_row({**a.row(), "dim": 64})


def test_float16_vectors_round_trip_close_to_float32(tmp_path, query):
    wh = _shapes(tmp_path, n=3)
    r16 = extract_features(wh, dtype="float16", **TINY)
    r32 = extract_features(wh, dtype="float32", **TINY)
    assert query(wh, "SELECT feature_set, min(octet_length(vector)), max(octet_length(vector)) "
                     "FROM region_features GROUP BY ALL ORDER BY 2") == [
        (r16["feature_set"], 64, 64), (r32["feature_set"], 128, 128)]  # 32-d x 2 or 4 bytes
    v16 = load_region_features(wh, r16["feature_set"])
    v32 = load_region_features(wh, r32["feature_set"])
    assert v16.vectors.dtype == torch.float16 and v32.vectors.dtype == torch.float32
    assert list(v16.region_id) == list(v32.region_id)
    err = (v16.vectors.float() - v32.vectors).abs().max() / v32.vectors.abs().max()
    # float16 keeps ~3 decimal digits (on a GPU, bf16 autocast output is exact in float16)
    assert err < 1e-3
