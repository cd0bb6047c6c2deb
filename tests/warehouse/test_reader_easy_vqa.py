"""easy-VQA from the installed `easy_vqa` package (test split: 1,000 images, 9,673 questions) and
from a folder with the package's layout."""
import time

import pytest

from warehouse.ingest.build import ingest
from warehouse.ingest.emitter import stable_id
from warehouse.ingest.readers.easy_vqa import caption_for
from warehouse.ingest.sources import InputError


def qid(split, image_id, text):
    return "easy-vqa:q:" + stable_id(split, image_id, text)


def test_package_test_split(tmp_path, query, rejects):
    import easy_vqa
    texts, answers, image_ids = easy_vqa.get_test_questions()
    wh = tmp_path / "wh"
    started = time.time()
    r = ingest("easy-vqa", source=None, warehouse=wh, split="test")
    assert time.time() - started < 15
    assert r.balanced and r.rejected == 0
    assert r.tables["images"]["new"] == len(easy_vqa.get_test_image_paths()) == 1000
    assert r.tables["questions"]["new"] == len(texts) == 9673
    assert query(wh, "SELECT id, source_id, split, width, height, path FROM images "
                     "WHERE id = 'easy-vqa:test/0'") == [
        ("easy-vqa:test/0", "test/0", "test", 64, 64, easy_vqa.get_test_image_paths()[0])]
    assert query(wh, "SELECT DISTINCT split FROM questions") == [("test",)]
    # the package's first test question: ['what is the red shape?', 'triangle', 0]
    assert (texts[0], answers[0], image_ids[0]) == ("what is the red shape?", "triangle", 0)
    assert query(wh, "SELECT id, image_id, question, answers FROM questions "
                     "WHERE question = 'what is the red shape?' AND image_id = 'easy-vqa:test/0'"
                 ) == [(qid("test", "easy-vqa:test/0", "what is the red shape?"),
                        "easy-vqa:test/0", "what is the red shape?",
                        [{"answer": "triangle", "count": 10}])]
    caps = dict(query(wh, "SELECT image_id, text FROM captions"))
    assert caps["easy-vqa:test/0"] == "a red triangle"
    assert caps["easy-vqa:test/1"] == "a yellow rectangle"
    assert caps["easy-vqa:test/10"] == "a circle"          # its questions never name the colour
    assert query(wh, "SELECT id FROM captions WHERE image_id = 'easy-vqa:test/0'") == [
        ("easy-vqa:c:test/0",)]
    assert r.tables["captions"]["new"] == len(caps) == 984   # 16 images have no colour or shape
    assert ingest("easy-vqa", source=None, warehouse=wh, split="test").skipped is True


def test_folder_with_package_layout(tmp_path, make_image, write_json, query, rejects):
    src = tmp_path / "easy"
    make_image(src / "train" / "images" / "0.png", size=(64, 64))
    make_image(src / "train" / "images" / "1.png", size=(64, 64))
    write_json(src / "train" / "questions.json", [
        ["what color is the shape?", "blue", 0],
        ["is there not a circle?", "no", 0],            # -> there is a circle
        ["is there a red shape?", "no", 0],             # says nothing positive
        ["does the image contain a triangle?", "yes", 1],
        ["what color is the shape?", "green", 1],
        ["what is the color of the triangle?", "teal", 1],  # contradicts green: colour dropped
        ["what shape is present?", "rectangle", 7],     # image 7 has no file
        ["what shape is present?", 3],                  # malformed record
    ])
    wh = tmp_path / "wh"
    r = ingest("easy-vqa", source=src, warehouse=wh, split="train")
    assert r.balanced
    assert query(wh, "SELECT id FROM images ORDER BY id") == [("easy-vqa:train/0",),
                                                             ("easy-vqa:train/1",)]
    assert query(wh, "SELECT id, image_id, text, split FROM captions ORDER BY id") == [
        ("easy-vqa:c:train/0", "easy-vqa:train/0", "a blue circle", "train"),
        ("easy-vqa:c:train/1", "easy-vqa:train/1", "a triangle", "train")]
    assert query(wh, "SELECT count(*) FROM questions") == [(6,)]
    assert rejects(wh) == {
        "malformed question record: expected [question, answer, image id]": 1,
        "refers to an unknown or rejected image": 2}   # image 7's question and caption
    assert query(wh, "SELECT source_file, record_ref FROM rejects WHERE reason LIKE 'malformed%'"
                 ) == [("train/questions.json", "[7]")]
    # without --split the missing test/questions.json is an input error naming it
    with pytest.raises(InputError, match="questions.json"):
        ingest("easy-vqa", source=src, warehouse=tmp_path / "wh2")


def test_caption_rules():
    assert caption_for({"red"}, {"circle"}) == "a red circle"
    assert caption_for({"red"}, set()) == "a red shape"
    assert caption_for(set(), {"circle"}) == "a circle"
    assert caption_for(set(), set()) is None
    assert caption_for({"red", "blue"}, set()) is None


def test_unknown_split(tmp_path):
    with pytest.raises(InputError, match="train, test"):
        ingest("easy-vqa", source=None, warehouse=tmp_path / "wh", split="val")
