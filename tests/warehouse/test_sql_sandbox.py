"""`mvp sql` runs in a sandboxed connection: only queries are accepted, the connection can read
the current snapshot's part files and nothing else, writes nowhere (not even spills into the
working directory), and stops queries that run too long or need too much memory. Results
stream in batches."""
import shutil
import tempfile
import time
from collections.abc import Iterator

import duckdb
import pytest

from flows.cli import main
from warehouse import catalog
from warehouse.catalog import ReadOnlyViolation, run_read_only
from warehouse.ingest.build import ingest
from warehouse.storage import open_storage
from warehouse.store import Warehouse

# a cross join that runs for hours unless stopped
ENDLESS = "SELECT count(*) FROM range(100000000) a, range(100000000) b"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("sandbox")
    ingest("shapes", root / "img", root / "wh", n_images=40, seed=2, workers=1)
    return root / "wh"


@pytest.fixture
def wh(built, tmp_path):
    """A private copy: a test that fails to stop a write must not spoil the others."""
    shutil.copytree(built, tmp_path / "wh")
    return tmp_path / "wh"


@pytest.fixture(params=["local", "s3"])
def any_wh(request, built) -> str:
    """A private copy on a local disk or in a bucket of the loopback S3 server (the log holds
    relative paths, so a byte copy is the same warehouse)."""
    if request.param == "local":
        return str(request.getfixturevalue("wh"))
    root = request.getfixturevalue("s3_root")
    storage = Warehouse(root).storage
    for path in built.rglob("*"):
        if path.is_file():
            storage.upload(path, path.relative_to(built).as_posix())
    return root


def fingerprint(wh) -> dict[str, str]:
    """Every file under the warehouse with its content hash."""
    storage = Warehouse(wh).storage
    return {rel: storage.sha256(rel) for rel in sorted(storage.listing(""))}


def images_part(wh) -> str:
    return Warehouse(wh).files("images")[0]


def test_explain_analyze_copy_cannot_forge_a_part(any_wh, tmp_path, monkeypatch, capsys):
    wh = any_wh
    monkeypatch.chdir(tmp_path)
    before = fingerprint(wh)
    attack = ("EXPLAIN ANALYZE COPY (SELECT * REPLACE ('EVIL' AS split) FROM images LIMIT 1) "
              f"TO '{images_part(wh)}' (FORMAT parquet)")
    with pytest.raises(ReadOnlyViolation, match="EXPLAIN"):
        run_read_only(wh, attack)
    assert main(["sql", attack, "--warehouse", str(wh)]) == 2
    err = capsys.readouterr().err
    assert "error" in err and len(err.strip().splitlines()) == 1
    assert fingerprint(wh) == before
    assert run_read_only(wh, "SELECT count(*), count(*) FILTER (split = 'EVIL') FROM images"
                         )[1] == [(40, 0)]


@pytest.mark.parametrize("sql", [
    "EXPLAIN ANALYZE COPY (SELECT 1) TO '{tables}/images/new.parquet' (FORMAT parquet)",
    "EXPLAIN ANALYZE SELECT count(*) FROM images",
    "EXPLAIN SELECT 1",
    "COPY (SELECT * FROM images LIMIT 1) TO '{part}' (FORMAT parquet, USE_TMP_FILE false)",
    "COPY (SELECT 1) TO '{cwd}/out.csv'",
    "EXPORT DATABASE '{cwd}/export'",
    "ATTACH '{cwd}/other.db' AS o",
    "ATTACH ':memory:' AS m",
    "INSTALL httpfs",
    "LOAD httpfs",
    "CREATE PERSISTENT SECRET s (TYPE s3, KEY_ID 'k', SECRET 's')",
    "SET memory_limit = '100GB'",
    "SET enable_external_access = true",
    "RESET lock_configuration",
    "PRAGMA memory_limit = '100GB'",
    "CALL pragma_version()",
    "SELECT 1; SELECT 2",
])
def test_only_queries_are_run(any_wh, sql, tmp_path, monkeypatch, capsys):
    wh = any_wh
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = fingerprint(wh)
    sql = sql.format(tables=f"{wh}/tables", part=images_part(wh), cwd=cwd)
    with pytest.raises(ReadOnlyViolation):
        run_read_only(wh, sql)
    assert main(["sql", sql, "--warehouse", str(wh)]) == 2
    assert "error" in capsys.readouterr().err
    assert fingerprint(wh) == before and list(cwd.iterdir()) == []


@pytest.mark.parametrize("sql", [
    "COPY (SELECT 1) TO '{tables}/images/new.parquet' (FORMAT parquet)",
    "EXPLAIN ANALYZE COPY (SELECT 1) TO '{tables}/images/new.parquet' (FORMAT parquet)",
    "COPY (SELECT 1) TO '{cwd}/out.csv'",
    "EXPORT DATABASE '{cwd}/export'",
    "ATTACH '{cwd}/other.db' AS o",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_text('{root}/_log/00000000000000000001.json')",
    "SELECT * FROM glob('{tables}/*/*')",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "SET allowed_directories = ['/']",
    "SET temp_directory = '{cwd}'",
    "COPY (SELECT 1) TO '{cwd}/out.parquet' (FORMAT parquet)",
    "SELECT * FROM read_text('{other}/x')",
])
def test_the_connection_itself_cannot_write_or_reach_other_files(any_wh, sql, tmp_path,
                                                                 monkeypatch):
    """The statement filter is not the only wall: the connection refuses these too."""
    wh = any_wh
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = fingerprint(wh)
    sql = sql.format(root=wh, tables=f"{wh}/tables", cwd=cwd, other=_other_root(wh))
    with catalog.connect_sandboxed(Warehouse(wh), str(tmp_path / "spill")) as con:
        with pytest.raises(duckdb.Error, match="disabled|locked"):
            con.execute(sql).fetchall()
        assert con.execute("SELECT count(*) FROM images").fetchone() == (40,)
    assert fingerprint(wh) == before and list(cwd.iterdir()) == []


@pytest.mark.parametrize("sql", [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_blob('/etc/passwd')",
    "SELECT * FROM read_text('{root}/_log/00000000000000000001.json')",
    "SELECT count(*) FROM read_parquet('{tables}/images/orphan.parquet')",
    "SELECT count(*) FROM read_parquet('{tables}/images/*.parquet')",
    "SELECT count(*) FROM read_parquet('{tables}/images/../images/orphan.parquet')",
    "SELECT count(*) FROM read_parquet('{other}/images.parquet')",
])
def test_only_the_snapshots_parts_can_be_read(any_wh, sql, capsys):
    wh = any_wh
    # a part file no snapshot lists (what a killed build leaves behind) stays out of reach
    storage = Warehouse(wh).storage
    part = storage.read(Warehouse(wh).relative(images_part(wh)))
    storage.write("tables/images/orphan.parquet", part)
    open_storage(_other_root(wh)).write("images.parquet", part)
    sql = sql.format(root=wh, tables=f"{wh}/tables", other=_other_root(wh))
    with pytest.raises(duckdb.PermissionException):
        run_read_only(wh, sql)
    assert main(["sql", sql, "--warehouse", str(wh)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disabled by configuration" in err[0]
    # the snapshot's own parts, through the views or by name, and empty tables still work
    assert run_read_only(wh, f"SELECT count(*) FROM read_parquet('{images_part(wh)}')"
                         )[1] == [(40,)]
    assert run_read_only(wh, "SELECT count(*) FROM rejects")[1] == [(0,)]


def _other_root(wh: str) -> str:
    """Where another warehouse's files would be: a sibling folder or bucket prefix."""
    return wh.replace("/wh", "/other") if wh.startswith("s3://") else f"{wh}-other"


def test_python_variables_are_not_tables(wh):
    import pyarrow as pa
    secret = pa.table({"password": ["hunter2"]})  # noqa: F841 (what the query looks for)
    with pytest.raises(duckdb.CatalogException):
        run_read_only(wh, "SELECT * FROM secret")


SPILLS = ("SELECT range AS i, repeat('x', 60) || range AS s FROM range(2000000) "
          "ORDER BY hash(range)")


def test_spills_go_to_a_private_folder_not_cwd_tmp(wh, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    # control: with DuckDB's defaults this sort spills into <cwd>/.tmp
    with duckdb.connect(config={"memory_limit": "64MB", "threads": 2}) as con:
        con.execute(SPILLS).fetchmany(1)
        assert any((cwd / ".tmp").iterdir())
    shutil.rmtree(cwd / ".tmp", ignore_errors=True)

    private = tmp_path / "tmp"  # where tempfile.mkdtemp puts the sandbox's spill folder
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    _, batches = catalog.stream_read_only(wh, SPILLS, memory_limit="64MB")
    assert len(next(batches)) > 0  # the sort has finished: it spilled, and not into cwd
    assert list(cwd.iterdir()) == []
    assert any(p.name.startswith("duckdb_temp") for p in private.glob("mvp-sql-*/*"))
    batches.close()
    assert list(private.iterdir()) == []  # removed with the connection


def test_timeout_stops_a_query(wh, capsys):
    start = time.monotonic()
    with pytest.raises(catalog.QueryTimeout, match="exceeded 1 s"):
        run_read_only(wh, ENDLESS, timeout=1)
    assert time.monotonic() - start < 10
    start = time.monotonic()
    assert main(["sql", ENDLESS, "--warehouse", str(wh), "--timeout", "0.5"]) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exceeded 0.5 s" in err[0]


def test_memory_limit_is_applied(wh, capsys):
    def reported(limit):  # DuckDB's own rendering of a limit
        return duckdb.connect(config={"memory_limit": limit}).execute(
            "SELECT current_setting('memory_limit')").fetchone()[0]
    sql = "SELECT current_setting('memory_limit') AS m"
    assert run_read_only(wh, sql, memory_limit="300MB")[1] == [(reported("300MB"),)]
    assert run_read_only(wh, sql)[1] == [(reported(catalog.DEFAULT_MEMORY_LIMIT),)]
    assert main(["sql", sql, "--warehouse", str(wh), "--memory-limit", "1GB"]) == 0
    assert capsys.readouterr().out.splitlines()[2].strip() == reported("1GB")
    # a result that cannot fit fails with DuckDB's one-line error instead of eating the box
    assert main(["sql", "SELECT list(range) FROM range(50000000)", "--warehouse", str(wh),
                 "--memory-limit", "64MB"]) == 2
    assert "Out of Memory" in capsys.readouterr().err


def test_results_stream_in_batches(wh):
    # ten billion rows: only a lazy reader returns the first ones at all
    columns, batches = catalog.stream_read_only(wh, "SELECT range AS n FROM range(10000000000)",
                                                batch_rows=1000, timeout=60)
    assert columns == ["n"] and isinstance(batches, Iterator)
    assert next(batches) == [(n,) for n in range(1000)]
    assert next(batches)[0] == (1000,)
    batches.close()


def test_cli_prints_rows_as_they_arrive(wh, capsys):
    # rows are on stdout before the never-ending query is stopped
    assert main(["sql", "SELECT range AS n FROM range(10000000000)", "--warehouse", str(wh),
                 "--timeout", "1", "--format", "csv"]) == 2
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert out[0] == "n" and out[1:20001] == [str(n) for n in range(20000)]
    assert "exceeded 1 s" in captured.err


def test_cli_table_keeps_its_columns_past_the_first_batch(wh, capsys):
    sql = "SELECT range + 10000 AS n, 'x' AS s FROM range(25000) ORDER BY n"
    assert main(["sql", sql, "--warehouse", str(wh)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 + 25000
    assert out[0].split() == ["n", "s"] and out[2].split() == ["10000", "x"]
    assert out[-1].split() == ["34999", "x"]
    assert {line.index("x") for line in out[2:]} == {out[0].index("s")}
