"""The concept vocabulary build (features/vocabulary.py) and the concept queries
(warehouse/concept_queries.py) on a hand-made folder dataset whose counts are known exactly."""
import json

import pytest

from warehouse import concept_queries as q
from warehouse.catalog import connect
from warehouse.ingest.build import ingest
from warehouse.store import Warehouse

MIN = 3
# caption counts: kite 4, (kite, red) 3, tree 3, (kite, above, tree) 3 -> in at min_count 3;
# boat 2, (boat, blue) 2, (tree, green) 1 -> out; "it is." yields no concept.
# region images: kite 2 (merges with the text concept), umbrella 3 (in by its images; its one
# caption is then linked too), dog 2 and boat 1 (out, boat also too rare in captions).
IMAGES = {
    "img0.png": (["a red kite above a tree", "a kite"], ["Kites"]),
    "img1.png": (["a red kite above a tree"], ["kite"]),
    "img2.png": (["a red kite above a green tree", "a blue boat"], []),
    "img3.png": (["a blue boat"], ["umbrella", "boat"]),
    "img4.png": (["it is."], ["umbrella", "dog"]),
    "img5.png": (["an umbrella"], ["umbrella", "dog"]),
}
# detector labels normalise like annotations: "Dogs" on img4 is the dog already annotated there
DETECTIONS = {"img3.png": [("umbrella", 0.6), ("umbrella", 0.9)], "img4.png": [("Dogs", 0.8)]}


@pytest.fixture(scope="module", autouse=True)
def _wordnet(nltk_data):
    return nltk_data


def make_warehouse(root, make_image):
    data = root / "data"
    lines = []
    for k, (name, (captions, labels)) in enumerate(IMAGES.items()):
        make_image(data / name, size=(40, 30), color=(10 * k, 50, 90))
        lines.append({"image": name, "caption": captions,
                      "regions": [{"box": [1 + j, 1, 20 + j, 20], "label": lab}
                                  for j, lab in enumerate(labels)]})
    (data / "captions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    ingest("folder", source=data, warehouse=root / "wh")
    with open(data / "predictions.tsv", "w") as f:
        for name, dets in DETECTIONS.items():
            objects = [{"class": c, "conf": s, "rect": [2, 2, 10 + i, 10]}
                       for i, (c, s) in enumerate(dets)]
            f.write(f"folder:{name}\t{json.dumps({'objects': objects})}\n")
    ingest("vinvl-predictions", source=data / "predictions.tsv", warehouse=root / "wh")
    return root / "wh"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from PIL import Image
    root = tmp_path_factory.mktemp("vocab")

    def make_image(path, size, color):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, color).save(path)
    wh = make_warehouse(root, make_image)
    from features.vocabulary import build_vocabulary
    report = build_vocabulary(wh, min_count=MIN)
    return wh, report, make_image


def rows(wh, sql, params=None):
    with connect(wh) as con:
        return con.execute(sql, params or []).fetchall()


def test_thresholds_merge_and_stable_order(built):
    wh, report, _ = built
    got = rows(wh, "SELECT id, kind, tuple, text, side, caption_count, image_count "
                   "FROM concepts ORDER BY id")
    assert got == [
        (0, "object", ["kite"], "kite", "both", 4, 3),          # captions on 0-2, regions 0-1
        (1, "object", ["tree"], "tree", "text", 3, 3),
        (2, "object", ["umbrella"], "umbrella", "both", 1, 3),  # in by its 3 images
        (3, "attribute", ["kite", "red"], "kite red", "text", 3, 3),
        (4, "relation", ["kite", "above", "tree"], "kite above tree", "text", 3, 3),
    ]
    assert report["skipped"] is False
    assert report["captions"] == 8 and report["captions_with_concepts"] == 7
    assert report["by_kind"] == {"object": 3, "attribute": 1, "relation": 1}
    assert report["by_side"] == {"text": 3, "visual": 0, "both": 2}
    assert report["labels"] == 6  # Kites, kite, umbrella, boat, dog, Dogs


def test_caption_concepts_spans(built):
    wh, report, _ = built
    spans = rows(wh, """
        SELECT c.text, k.text, cc.token_start, cc.token_end FROM caption_concepts cc
        JOIN concepts k ON k.id = cc.concept_id JOIN captions c ON c.id = cc.caption_id
        WHERE c.image_id = 'folder:img2.png' ORDER BY cc.token_start, k.id""")
    # "a red kite above a green tree": (tree, green) is below min_count, so not linked
    text = "a red kite above a green tree"
    assert spans == [(text, "kite red", 1, 3), (text, "kite", 2, 3),
                     (text, "kite above tree", 2, 7), (text, "tree", 6, 7)]
    n = rows(wh, "SELECT count(*) FROM caption_concepts")[0][0]
    assert report["caption_concepts"] == 14 == n
    assert report["mentions"] == 19  # 14 in the vocabulary + boat x2, blue boat x2, green tree


def test_image_concepts_sources_and_scores(built):
    wh, report, _ = built
    got = rows(wh, """SELECT ic.image_id, k.text, ic.source, round(ic.score::DOUBLE, 3)
                      FROM image_concepts ic JOIN concepts k ON k.id = ic.concept_id
                      ORDER BY ALL""")
    assert got == [("folder:img0.png", "kite", "annotation", None),
                   ("folder:img1.png", "kite", "annotation", None),
                   ("folder:img3.png", "umbrella", "annotation", None),
                   ("folder:img3.png", "umbrella", "detector", 0.9),  # the most confident box
                   ("folder:img4.png", "umbrella", "annotation", None),
                   ("folder:img5.png", "umbrella", "annotation", None)]
    assert report["image_concepts"] == 6


def test_rerun_is_a_noop(built):
    from features.vocabulary import build_vocabulary, latest_vocab
    wh, report, _ = built
    before = Warehouse(wh).current().version
    again = build_vocabulary(wh, min_count=MIN)
    assert again["skipped"] is True and again["vocab"] == report["vocab"]
    assert again["concepts"] == 5
    assert Warehouse(wh).current().version == before
    assert latest_vocab(wh) == report["vocab"]


def test_identical_data_gives_identical_ids(built, tmp_path):
    from features.vocabulary import build_vocabulary
    wh, report, make_image = built
    other = make_warehouse(tmp_path, make_image)
    second = build_vocabulary(other, min_count=MIN)
    # different part files -> a different vocabulary id, but the same concepts and ids
    assert second["vocab"] != report["vocab"]
    sql = "SELECT id, kind, tuple, side, caption_count, image_count FROM concepts ORDER BY id"
    assert rows(other, sql) == rows(wh, sql)


def test_max_size_keeps_most_supported(built, tmp_path):
    from features.vocabulary import build_vocabulary
    wh, _, make_image = built
    other = make_warehouse(tmp_path, make_image)
    report = build_vocabulary(other, min_count=MIN, max_size=3)
    # support: kite 4, then four concepts at 3; ties go to objects first, then by text
    assert rows(other, "SELECT id, text FROM concepts ORDER BY id") == [
        (0, "kite"), (1, "tree"), (2, "umbrella")]
    assert report["caption_concepts"] == 8  # kite x4 + tree x3 + umbrella


def test_min_count_boundary(built, tmp_path):
    from features.vocabulary import build_vocabulary
    wh, _, make_image = built
    other = make_warehouse(tmp_path, make_image)
    build_vocabulary(other, min_count=MIN + 1)  # only kite (4 captions) is left
    assert rows(other, "SELECT text, side FROM concepts") == [("kite", "both")]
    vocab = build_vocabulary(other, min_count=MIN - 1)["vocab"]  # boat, blue boat, dog join
    texts = {r[0] for r in rows(other, "SELECT text FROM concepts WHERE vocab = ?", [vocab])}
    assert texts == {"kite", "tree", "umbrella", "kite red", "kite above tree",
                     "boat", "boat blue", "dog"}
    # dog: labelled on 2 images (annotation and detector), never in a caption
    assert rows(other, "SELECT side, caption_count, image_count FROM concepts "
                       "WHERE vocab = ? AND text = 'dog'", [vocab]) == [("visual", 0, 2)]


def test_dataset_filter_and_empty_vocabulary(built, tmp_path):
    from features.vocabulary import build_vocabulary
    wh, _, make_image = built
    other = make_warehouse(tmp_path, make_image)
    report = build_vocabulary(other, min_count=MIN, dataset="shapes")
    assert (report["captions"], report["concepts"], report["skipped"]) == (0, 0, False)
    assert build_vocabulary(other, min_count=MIN, dataset="shapes")["skipped"] is True


def test_queries(built):
    wh, report, _ = built
    with connect(wh) as con:
        assert [r[2] for r in q.top_concepts(con)] == [
            "kite", "kite above tree", "kite red", "tree", "umbrella"]
        assert q.top_concepts(con, kind="object", limit=2) == [
            (0, "object", "kite", "both", 4, 3), (1, "object", "tree", "text", 3, 3)]
        got = q.captions_with_concept(con, "Kite red", vocab=report["vocab"])
        assert sorted((r[1], r[3], r[4]) for r in got) == [
            ("folder:img0.png", 1, 3), ("folder:img1.png", 1, 3), ("folder:img2.png", 1, 3)]
        assert q.images_with_concept(con, "kite") == [
            ("folder:img0.png", "both", 2, "annotation"),
            ("folder:img1.png", "both", 1, "annotation"),
            ("folder:img2.png", "text", 1, None)]
        assert q.images_with_concept(con, "umbrella")[0] == (
            "folder:img3.png", "visual", 0, "annotation,detector")
        assert q.images_with_concept(con, "x'; DROP TABLE concepts; --") == []
        # img0 and img1 have kite regions and captions with all four text concepts
        assert q.concept_cooccurrence(con) == [
            ("kite", "kite", 2), ("kite above tree", "kite", 2), ("kite red", "kite", 2),
            ("tree", "kite", 2), ("umbrella", "umbrella", 1)]


def test_queries_refuse_to_mix_vocabularies(built, tmp_path):
    from features.vocabulary import build_vocabulary, latest_vocab
    wh, _, make_image = built
    other = make_warehouse(tmp_path, make_image)
    first = build_vocabulary(other, min_count=MIN)["vocab"]
    second = build_vocabulary(other, min_count=MIN + 1)["vocab"]
    with connect(other) as con:
        with pytest.raises(ValueError, match="pass vocab="):
            q.top_concepts(con)
        assert len(q.top_concepts(con, vocab=first)) == 5
        assert q.top_concepts(con, vocab=latest_vocab(other)) == [
            (0, "object", "kite", "both", 4, 3)]
        assert latest_vocab(other) == second


def test_shapes_end_to_end(tmp_path):
    """Real generated scenes: every mention is linked at min_count 1, spans match the extractor,
    and the four shape labels are concepts seen on both sides."""
    from features.text_concepts import extract
    from features.vocabulary import build_vocabulary
    ingest("shapes", tmp_path / "img", tmp_path / "wh", n_images=30, workers=1)
    report = build_vocabulary(tmp_path / "wh", min_count=1)
    assert report["captions"] == 90 == report["captions_with_concepts"]
    assert report["caption_concepts"] == report["mentions"]
    assert {r[0] for r in rows(tmp_path / "wh", "SELECT text FROM concepts WHERE side = 'both'")
            } == {"circle", "square", "triangle", "diamond"}
    text, cid = rows(tmp_path / "wh", "SELECT text, id FROM captions ORDER BY id LIMIT 1")[0]
    stored = rows(tmp_path / "wh", """
        SELECT k.tuple, cc.token_start, cc.token_end FROM caption_concepts cc
        JOIN concepts k ON k.id = cc.concept_id WHERE cc.caption_id = ? ORDER BY ALL""", [cid])
    assert stored == sorted((list(m.tuple), m.start, m.end) for m in extract(text))


def test_concept_queries_are_sql_macros_usable_from_mvp_sql(built, capsys):
    """`mvp sql` users call the same macros the Python functions run."""
    from flows.cli import main
    from warehouse.catalog import run_read_only
    wh, _, _ = built
    with connect(wh) as con:
        expected = {
            "SELECT * FROM top_concepts(NULL, 'object', 5)": q.top_concepts(con, "object",
                                                                              limit=5),
            "SELECT * FROM captions_with_concept(NULL, 'kite')":
                q.captions_with_concept(con, "kite"),
            "SELECT * FROM images_with_concept(NULL, 'kite')": q.images_with_concept(con, "kite"),
            "SELECT * FROM concept_cooccurrence(NULL, 10)": q.concept_cooccurrence(con, limit=10),
        }
    assert all(expected.values())  # each query has rows to compare
    for sql, rows_from_function in expected.items():
        assert run_read_only(wh, sql)[1] == rows_from_function
    assert main(["sql", "SELECT text FROM top_concepts(NULL, 'object', 1)",
                 "--warehouse", str(wh)]) == 0
    assert capsys.readouterr().out.splitlines()[2].strip() == "kite"


def test_parallel_build_equals_serial_build(tmp_path, monkeypatch):
    """Two workers over small caption partitions publish the very bytes one process does with
    one partition."""
    import shutil

    from features import vocabulary
    serial = tmp_path / "serial"
    ingest("shapes", tmp_path / "img", serial, n_images=40, workers=1)
    shutil.copytree(serial, tmp_path / "parallel")
    published = []
    for wh, workers, partition in ((serial, 1, 10_000), (tmp_path / "parallel", 2, 16)):
        monkeypatch.setattr(vocabulary, "BATCH_ROWS", partition)
        report = vocabulary.build_vocabulary(wh, min_count=2, workers=workers)
        snap = Warehouse(wh).current()
        parts = {table: [snap.parts[p]["sha256"] for p in snap.tables[table]]
                 for table in ("concepts", "caption_concepts", "image_concepts")}
        published.append((parts, {k: v for k, v in report.items()
                                   if k not in ("seconds", "snapshot")}))
    assert published[0] == published[1]
    report = published[0][1]
    assert report["captions"] > 5 * 16 and report["concepts"] > 10 and report["skipped"] is False
