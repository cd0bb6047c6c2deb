"""A build killed at any point leaves the previous snapshot readable and is cleaned up by the
next build; reruns of the same input are no-ops."""
import os
import signal
import subprocess
import sys

import pytest

from warehouse.catalog import connect
from warehouse.ingest.build import ingest
from warehouse.store import Warehouse

INGEST = ("from warehouse.ingest.build import ingest; import sys; "
          "ingest('shapes', sys.argv[1], sys.argv[2], n_images=int(sys.argv[3]), workers=1)")


def _counts(wh):
    with connect(wh) as con:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("images", "captions", "regions", "questions")}


@pytest.mark.parametrize("point", ["after-stage", "before-commit", "ingest-after-upload"])
def test_killed_build_leaves_previous_snapshot_readable(tmp_path, point):
    wh = tmp_path / "wh"
    ingest("shapes", tmp_path / "img", wh, n_images=30, workers=1)
    before = _counts(wh)
    version = Warehouse(wh).current().version

    proc = subprocess.run([sys.executable, "-c", INGEST, str(tmp_path / "img"), str(wh), "50"],
                          env={**os.environ, "MVP_FAULT": point}, capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    # the dead build wrote files, but no snapshot references them
    assert Warehouse(wh).current().version == version
    assert _counts(wh) == before
    leftovers = list((wh / "_staging").rglob("*.parquet"))
    if point == "ingest-after-upload":
        leftovers += [p for p in (wh / "tables").rglob("*.parquet")
                      if Warehouse(wh).relative(p) not in
                      {f for fs in Warehouse(wh).current().tables.values() for f in fs}]
    assert leftovers

    report = ingest("shapes", tmp_path / "img", wh, n_images=50, workers=1)  # resumes cleanly
    assert report.balanced and report.tables["images"] == {
        "staged": 50, "new": 20, "existing": 30, "rejected": {}}
    assert not (wh / "_staging").exists() or not any((wh / "_staging").iterdir())
    live = {f for fs in Warehouse(wh).current().tables.values() for f in fs}
    on_disk = {Warehouse(wh).relative(p) for p in (wh / "tables").rglob("*.parquet")}
    assert on_disk == live  # orphans of the killed build are gone
    assert _counts(wh)["images"] == 50


def test_reader_sees_old_snapshot_while_a_build_commits(tmp_path):
    wh = tmp_path / "wh"
    ingest("shapes", tmp_path / "img", wh, n_images=10, workers=1)
    old = Warehouse(wh).current()
    ingest("shapes", tmp_path / "img", wh, n_images=25, workers=1)
    con = connect(wh, snapshot=old)  # a reader pinned to the snapshot it opened
    assert con.execute("SELECT count(*) FROM images").fetchone()[0] == 10
    assert connect(wh).execute("SELECT count(*) FROM images").fetchone()[0] == 25


def test_manifest_records_inputs_counts_and_code_version(tmp_path, make_image):
    folder = tmp_path / "data"
    make_image(folder / "a.png")
    (folder / "captions.jsonl").write_text('{"image": "a.png", "caption": "a red square"}\n')
    ingest("folder", folder, tmp_path / "wh")
    build = Warehouse(tmp_path / "wh").current().builds[-1]
    assert build["inputs"][0]["path"].endswith("captions.jsonl")
    assert len(build["inputs"][0]["sha256"]) == 64
    assert build["counts"]["read"] == 2 and build["counts"]["new"] == 2
    assert build["code_version"].startswith("0.1.0")
    assert build["time"].endswith("Z")


def test_new_warehouse_has_typed_empty_tables(tmp_path):
    con = connect(tmp_path / "nothing-here")
    assert con.execute("SELECT count(*) FROM regions").fetchone()[0] == 0
    cols = [r[0] for r in con.execute("DESCRIBE regions").fetchall()]
    assert cols[:4] == ["region_id", "image_id", "dataset", "x1"]
