"""Which images a caption is provably true of: the parse of grounded captions, the check against
labelled regions, the indexed search against a brute-force one, and the batch mask ITM reads."""
import random

import pyarrow as pa
import torch

from features.caption_truth import Claim, Region, also_true, holds, parse
from model.batch import PretrainBatch
from warehouse.ingest.readers.shapes import captions, scene

GROUNDED = frozenset({"small", "large", "red", "blue", "circle", "square"})


def region(words: str, x: float, y: float) -> Region:
    return Region(frozenset(words.split()), (x, y, x + 10, y + 10))


def test_grounded_captions_parse_and_the_rest_do_not():
    assert parse("A small red circle left of a blue square.", GROUNDED) == Claim(
        (frozenset({"small", "red", "circle"}), frozenset({"blue", "square"})), "left of")
    assert parse("two shapes: a red circle and a large blue square", GROUNDED) == Claim(
        (frozenset({"red", "circle"}), frozenset({"large", "blue", "square"})), count=2)
    assert parse("a circle", GROUNDED) == Claim((frozenset({"circle"}),))
    assert parse("a green circle", GROUNDED) is None           # a word no region has
    assert parse("a red circle near a blue square", GROUNDED) is None   # not a known relation
    assert parse("many shapes: a circle and a square", GROUNDED) is None
    assert parse("", GROUNDED) is None


def test_claims_hold_by_words_geometry_and_count():
    regions = [region("small red circle", 0, 50), region("large blue square", 60, 50)]
    claim = parse("a red circle left of a blue square", GROUNDED)
    assert holds(claim, regions) and not holds(Claim(claim.phrases, "right of"), regions)
    assert not holds(parse("a large red circle", GROUNDED), regions)   # words of one region
    assert holds(parse("two shapes: a circle and a square", GROUNDED), regions)
    assert not holds(parse("two shapes: a circle and a circle", GROUNDED), regions)  # distinct
    assert not holds(parse("one shapes: a circle", GROUNDED), regions)   # the count is exact
    # a relation needs two regions, never one region with itself
    assert not holds(parse("a circle left of a circle", GROUNDED), regions)


def _shapes(n: int):
    regions, caps = {}, []
    for k in range(n):
        s = scene(7, k)
        image = f"img{k}"
        regions[image] = [Region(frozenset((o["size"], o["colour"], o["shape"])), o["box"])
                          for o in s["objects"]]
        caps += [(text, image) for text in captions(s["objects"], random.Random(k))]
    return regions, caps


def test_every_shapes_caption_holds_for_its_own_scene_and_the_index_misses_nothing():
    regions, caps = _shapes(150)
    grounded = frozenset(w for rs in regions.values() for r in rs for w in r.words)
    claims = [parse(text, grounded) for text, _ in caps]
    assert all(c is not None and holds(c, regions[image]) for c, (_, image) in zip(claims, caps))
    brute = [sorted(i for i in regions if i != own and holds(c, regions[i]))
             for c, (_, own) in zip(claims, caps)]
    found = also_true(caps, regions)
    assert found == brute
    # the colour+shape relation captions are often true elsewhere; the point of the filter
    assert sum(map(bool, found)) > 10


def test_the_batch_mask_reads_only_this_batch_s_images():
    b = PretrainBatch(torch.zeros(3, 2, dtype=torch.long), torch.ones(3, 2, dtype=torch.bool),
                      torch.zeros(3, 0, dtype=torch.long), torch.zeros(3, 0, dtype=torch.bool),
                      torch.zeros(3, 0, 2, dtype=torch.long), None, torch.tensor([4, 9, 7]),
                      ["a", "b", "c"], ["4", "9", "7"],
                      also_true=torch.tensor([[7, -1], [-1, -1], [9, 4]]))
    assert b.known_matches().tolist() == [[False, False, True], [False, False, False],
                                          [True, True, False]]
    assert b.take(torch.tensor([2, 0])).known_matches().tolist() == [[False, True],
                                                                     [True, False]]


def test_in_memory_data_finds_the_matches_across_the_split(tmp_path, tiny_feature_store):
    from model.config import load_config
    from model.training.data import PretrainData
    from warehouse.catalog import connect
    wh, fs, vocab = tiny_feature_store(tmp_path)
    cfg = load_config("tiny", feat_dim=fs["dim"], n_concepts=vocab["concepts"])
    data = PretrainData(wh, fs["feature_set"], vocab["vocab"], cfg, split=None)
    with connect(wh) as con:
        rows = con.sql("SELECT id, image_id, text FROM captions").to_arrow_table()
    text = dict(zip(rows["id"].to_pylist(), zip(rows["text"].to_pylist(),
                                                  rows["image_id"].to_pylist())))
    from features.caption_truth import labelled_regions
    with connect(wh) as con:
        con.register("_all", pa.table({"image_id": list(data.images.row)}))
        regions = labelled_regions(con, "_all")
    expected = also_true([text[str(c)] for c in data.caption_ids], regions)
    got = [[str(data.images.regions.image_ids[r]) for r in data[i]["also_true"].tolist()]
           for i in range(len(data))]
    assert got == expected
