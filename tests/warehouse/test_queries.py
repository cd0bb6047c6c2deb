"""Query functions bind user values as parameters; `mvp sql` cannot write."""
import pytest

from flows.cli import main
from warehouse import queries
from warehouse.catalog import ReadOnlyViolation, connect, run_read_only
from warehouse.ingest.build import ingest


@pytest.fixture(scope="module")
def wh(tmp_path_factory):
    root = tmp_path_factory.mktemp("q")
    ingest("shapes", root / "img", root / "wh", n_images=40, seed=2, workers=1)
    folder = root / "folder"
    from PIL import Image
    folder.mkdir()
    Image.new("RGB", (20, 20)).save(folder / "o'brien.png")
    (folder / "captions.jsonl").write_text(
        '{"image": "o\'brien.png", "caption": "o\'brien\'s red square", '
        '"regions": [{"box": [1, 1, 9, 9], "label": "square"}]}\n')
    ingest("folder", folder, root / "wh")
    return root / "wh"


def test_values_with_quotes_are_data_not_sql(wh):
    con = connect(wh)
    hits = queries.captions_mentioning(con, "o'brien's")
    assert [t for _, _, t in hits] == ["o'brien's red square"]
    # an injection attempt is just a string that matches nothing
    assert queries.captions_mentioning(con, "x' OR '1'='1") == []
    assert queries.images_in_dataset(con, "shapes' OR 'a'='a") == []
    assert queries.images_with_label(con, "square' OR label IS NOT NULL --") == []


def test_query_functions_return_what_the_tables_hold(wh):
    con = connect(wh)
    shapes_imgs = queries.images_in_dataset(con, "shapes")
    assert len(shapes_imgs) == 40
    train = queries.images_in_dataset(con, "shapes", "train")
    assert 0 < len(train) < 40 and all(s == "train" for _, s, *_ in train)
    n_squares = con.execute("SELECT count(DISTINCT image_id) FROM regions "
                            "WHERE label = 'square'").fetchone()[0]
    assert len(queries.images_with_label(con, "SQUARE")) == n_squares
    summary = {d: counts for d, *counts in queries.dataset_summary(con)}
    assert {d: (i, c, e) for d, (i, c, _, _, e, _) in summary.items()} == {
        "folder": (1, 1, 0), "shapes": (40, 120, 120)}
    assert queries.rejects_by_reason(con) == []


@pytest.mark.parametrize("sql", [
    "CREATE TABLE t AS SELECT 1",
    "INSERT INTO images SELECT * FROM images",
    "DROP VIEW images",
    "COPY (SELECT * FROM images) TO 'out.parquet'",
    "ATTACH 'other.db' AS o",
    "SET lock_configuration = false",
    "SELECT 1; DROP VIEW images",
])
def test_sql_refuses_anything_that_could_write(wh, sql, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ReadOnlyViolation):
        run_read_only(wh, sql)
    assert main(["sql", sql, "--warehouse", str(wh)]) == 2
    assert "error" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_sql_cannot_read_outside_the_warehouse(wh):
    with pytest.raises(Exception, match="disabled by configuration"):
        run_read_only(wh, "SELECT * FROM read_csv('/etc/hostname')")


def test_sql_and_tables_print_results(wh, capsys):
    assert main(["sql", "SELECT dataset, count(*) AS n FROM images GROUP BY 1 ORDER BY 1",
                 "--warehouse", str(wh)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["dataset", "n"]
    assert out[2].split() == ["folder", "1"] and out[3].split() == ["shapes", "40"]
    assert main(["tables", "--warehouse", str(wh)]) == 0
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()[3:]}
    assert rows["images"] == "41" and rows["captions"] == "121" and rows["rejects"] == "0"
