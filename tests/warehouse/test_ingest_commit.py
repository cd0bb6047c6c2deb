"""Ingest on every kind of root: its merge writes parts to a local staging folder and publishes
them through the store; when another writer publishes rows of the same tables first, the merge
runs again against them, so nothing is lost or stored twice."""
import pytest

from warehouse.catalog import connect
from warehouse.ingest import build
from warehouse.ingest.build import ingest


def _images(root) -> tuple[int, int]:
    with connect(root) as con:
        return con.execute("SELECT count(*), count(DISTINCT id) FROM images").fetchone()


def test_ingest_publishes_through_the_store(root, tmp_path):
    report = ingest("shapes", tmp_path / "img", root, n_images=6, workers=1)
    assert report.balanced and report.snapshot == 1 and report.tables["images"]["new"] == 6
    assert _images(root) == (6, 6)
    again = ingest("shapes", tmp_path / "img", root, n_images=6, workers=1)
    assert again.skipped and again.snapshot == 1


def test_a_writer_that_publishes_first_makes_the_merge_run_again(root, tmp_path, monkeypatch):
    merges = []
    merge = build.merge

    def merge_then_lose_the_race(wh, snap, *args):
        merges.append(snap.version)
        out = merge(wh, snap, *args)
        if len(merges) == 1:  # another writer ingests the first 4 of our 10 scenes meanwhile
            ingest("shapes", tmp_path / "img", root, n_images=4, workers=1)
        return out

    monkeypatch.setattr(build, "merge", merge_then_lose_the_race)
    report = ingest("shapes", tmp_path / "img", root, n_images=10, workers=1)
    assert merges == [0, 0, 1]  # ours against 0, the other writer's against 0, ours again
    assert report.snapshot == 2 and report.balanced
    assert report.tables["images"] == {"staged": 10, "new": 6, "existing": 4, "rejected": {}}
    assert _images(root) == (10, 10)


def test_the_same_input_published_meanwhile_is_skipped(root, tmp_path, monkeypatch):
    merge = build.merge
    raced = []

    def merge_then_lose_the_race(wh, snap, *args):
        out = merge(wh, snap, *args)
        if not raced:
            raced.append(True)
            ingest("shapes", tmp_path / "img", root, n_images=5, workers=1)
        return out

    monkeypatch.setattr(build, "merge", merge_then_lose_the_race)
    report = ingest("shapes", tmp_path / "img", root, n_images=5, workers=1)
    assert report.skipped and report.snapshot == 1
    assert _images(root) == (5, 5)


@pytest.mark.parametrize("root", ["local"], indirect=True)
def test_a_local_ingest_stages_its_parts_under_the_root(root, tmp_path):
    ingest("shapes", tmp_path / "img", root, n_images=3, workers=1)
    # staged parts are linked into tables/, not copied: nothing is left in _staging
    assert not any((tmp_path / "wh" / "_staging").iterdir())


def test_generated_inputs_of_an_s3_warehouse_go_to_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    ctx = build.make_context("shapes", None, "s3://bucket/wh", seed=3)
    assert ctx.source.is_relative_to(tmp_path / "xdg" / "mvp")
    assert ctx.source.name == "shapes-seed3"
    local = build.make_context("shapes", None, tmp_path / "wh")
    assert local.source == tmp_path / "wh" / "sources" / "shapes-seed0"
