"""A partitioned ingest: one build per partition of the input (shapes: scene ranges; tsv: every
n-th line), run in parallel processes, each with its own fingerprint, merge and optimistic commit.
Together they publish exactly the rows one build publishes, and every count still adds up."""
import pytest

from warehouse.catalog import connect
from warehouse.ingest import build
from warehouse.ingest.build import ingest, ingest_context, make_context
from warehouse.ingest.merge import MERGE_ORDER
from warehouse.ingest.sources import InputError, partition
from warehouse.schemas import TABLES
from warehouse.store import Warehouse


def _rows(root) -> dict[str, list[tuple]]:
    """Every ingest table's rows, sorted, without the build that wrote them."""
    out = {}
    with connect(root) as con:
        for table in (*MERGE_ORDER, "rejects"):
            cols = ", ".join(c for c in TABLES[table].names if c != "ingest_id")
            out[table] = sorted(con.execute(f"SELECT {cols} FROM {table}").fetchall(), key=repr)
    return out


def _version(root) -> int:
    return Warehouse(root).current().version


def test_two_partitions_publish_what_one_build_publishes(tmp_path):
    whole = ingest("shapes", tmp_path / "img", tmp_path / "one", n_images=12, workers=1)
    parts = ingest("shapes", tmp_path / "img", tmp_path / "two", n_images=12, workers=1,
                   partitions=2)
    assert _rows(tmp_path / "two") == _rows(tmp_path / "one")
    assert len(parts.partitions) == 2 and _version(tmp_path / "two") == 2  # a commit each
    assert [r.tables["images"]["new"] for r in parts.partitions] == [6, 6]  # scenes 0-5, 6-11
    assert parts.balanced and all(r.balanced for r in parts.partitions)
    assert (parts.read, parts.new, parts.tables) == (whole.read, whole.new, whole.tables)
    builds = list(Warehouse(tmp_path / "two").current().builds)
    assert sorted(b["params"]["partition"] for b in builds) == ["partition 1 of 2",
                                                                 "partition 2 of 2"]
    assert len({b["fingerprint"] for b in builds}) == 2


def test_a_partition_that_loses_the_commit_race_merges_again(root, tmp_path, monkeypatch):
    # The race is forced, not left to timing: both partitions start from snapshot 0, and the
    # second commits while the first is between its merge and its publish
    first, second = partition(make_context("shapes", tmp_path / "img", root, n_images=8,
                                           workers=1), 2)
    merges, merge = [], build.merge

    def merge_then_lose_the_race(wh, snap, *args):
        merges.append(snap.version)
        out = merge(wh, snap, *args)
        if len(merges) == 1:
            ingest_context(second, root)
        return out

    monkeypatch.setattr(build, "merge", merge_then_lose_the_race)
    report = ingest_context(first, root)
    assert merges == [0, 0, 1]  # first against 0, second against 0, first again against 1
    assert (report.merges, report.snapshot, _version(root)) == (2, 2, 2)  # 2 new log entries
    assert report.balanced and report.tables["images"]["new"] == 4
    with connect(root) as con:
        for table, key in (("images", "id"), ("regions", "region_id"), ("captions", "id")):
            total, distinct = con.execute(
                f"SELECT count(*), count(DISTINCT {key}) FROM {table}").fetchone()
            assert total == distinct > 0, table  # no row doubled
        assert con.execute("SELECT count(*) FROM images").fetchone() == (8,)  # none lost


def test_counts_add_up_per_partition_and_in_total(tmp_path, make_image):
    data = tmp_path / "cc"
    make_image(data / "a.jpg")
    make_image(data / "b.png", color=(0, 0, 200))
    table = data / "train.tsv"
    table.write_bytes(b"a red square\ta.jpg\n"          # line 1: partition 2 (odd lines)
                      b"red again\ta.jpg\n"             # line 2: partition 1, same image
                      b"three\tfields\there\n"          # line 3: malformed, partition 2 only
                      b"remote\thttp://example.com/x.jpg\n"
                      b"a blue square\tb.png\n")
    whole = ingest("tsv", table, tmp_path / "one", split="train")
    parts = ingest("tsv", table, tmp_path / "two", split="train", partitions=2)
    assert whole.balanced and parts.balanced and all(r.balanced for r in parts.partitions)
    assert (parts.read, parts.rejected) == (whole.read + 1, whole.rejected)  # a.jpg read twice
    assert parts.rejected_by_reason == whole.rejected_by_reason == {
        "malformed row": 1, "remote image URL": 1}
    assert [r.rejected_by_reason for r in parts.partitions] == [
        {"remote image URL": 1}, {"malformed row": 1}]
    # a.jpg is staged by both partitions: whichever commits second finds it present
    assert parts.tables["images"]["new"] == 2 and parts.tables["images"]["existing"] == 1
    assert _rows(tmp_path / "two") == _rows(tmp_path / "one")


def test_a_rerun_is_a_no_op_and_whole_after_partitioned_adds_nothing(tmp_path):
    root = tmp_path / "wh"
    ingest("shapes", tmp_path / "img", root, n_images=6, workers=1, partitions=2)
    rows = _rows(root)
    again = ingest("shapes", tmp_path / "img", root, n_images=6, workers=1, partitions=2)
    assert again.skipped and all(r.skipped for r in again.partitions) and _version(root) == 2
    whole = ingest("shapes", tmp_path / "img", root, n_images=6, workers=1)
    assert whole.balanced and whole.new == 0 and whole.existing == whole.read
    assert _rows(root) == rows


def test_partitioned_after_whole_adds_nothing(tmp_path):
    root = tmp_path / "wh"
    ingest("shapes", tmp_path / "img", root, n_images=6, workers=1)
    rows = _rows(root)
    parts = ingest("shapes", tmp_path / "img", root, n_images=6, workers=1, partitions=2)
    assert parts.balanced and parts.new == 0 and parts.existing == parts.read > 0
    assert _rows(root) == rows


def test_readers_that_cannot_split_refuse_partitions(tmp_path):
    ctx = make_context("coco", tmp_path, tmp_path / "wh")
    with pytest.raises(InputError, match="coco inputs cannot be split into partitions"):
        partition(ctx, 2)
    with pytest.raises(InputError, match="partitions must be 1 or more"):
        partition(ctx, 0)
    assert partition(ctx, 1) == [ctx]


def test_the_flow_artifact_shows_the_total_and_each_partition(tmp_path):
    from flows.ingest import report_markdown
    report = ingest("shapes", tmp_path / "img", tmp_path / "wh", n_images=4, workers=1,
                    partitions=2)
    markdown = report_markdown(report)
    assert f"read **{report.read}** = accepted **{report.new}** + rejected **0** (balanced)" \
        in markdown
    for k, part in enumerate(report.partitions):
        assert f"| {k + 1} of 2 | {part.snapshot} | {part.read} | {part.read} | 0 |" in markdown
