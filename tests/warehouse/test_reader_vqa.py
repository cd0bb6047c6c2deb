"""VQA v2 reader (*_questions.json + *_annotations.json) through the real pipeline."""
import pytest

from warehouse.ingest.build import ingest
from warehouse.ingest.sources import InputError
from warehouse.store import Warehouse


def _answers(*texts):
    return [{"answer": t, "answer_confidence": "yes", "answer_id": i + 1}
            for i, t in enumerate(texts)]


def _ann(qid, iid, answers, mc):
    return {"question_id": qid, "image_id": iid, "answers": answers, "question_type": "what",
            "answer_type": "other", "multiple_choice_answer": mc}


def _vqa(folder, make_image, write_json):
    make_image(folder / "val2014" / "COCO_val2014_000000000042.jpg", (64, 48))  # subfolder
    make_image(folder / "COCO_val2014_000000000073.jpg", (32, 24))              # flat
    make_image(folder / "test2015" / "COCO_test2015_000000000001.jpg", (20, 20))
    write_json(folder / "v2_OpenEnded_mscoco_val2014_questions.json", {
        "info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "val2014",
        "license": {}, "questions": [
            {"image_id": 42, "question": "What is on the table?", "question_id": 420},
            {"image_id": 42, "question": "Is it hot?", "question_id": 421},
            {"image_id": 73, "question": "How many cats?", "question_id": 730},
            {"image_id": 73, "question": "Is there an annotation?", "question_id": 731},
            {"image_id": 73, "question": "Whose image?", "question_id": 732},
            {"image_id": 99, "question": "Where is the file?", "question_id": 990},
        ]})
    write_json(folder / "v2_mscoco_val2014_annotations.json", {
        "info": {}, "data_subtype": "val2014", "annotations": [
            _ann(420, 42, _answers("Pizza", "pizza ", "pizza", "pizza", "slice of pizza",
                                   "pizza", "food", "pizza", "pizza", " Pizza"), "pizza"),
            _ann(421, 42, _answers(*(["yes"] * 7 + ["no"] * 3)), "yes"),
            _ann(730, 73, _answers(*(["2"] * 10)), "2"),
            _ann(732, 74, _answers(*(["me"] * 10)), "me"),       # image differs from question
            _ann(990, 99, _answers(*(["here"] * 10)), "here"),
            _ann(5555, 42, _answers(*(["x"] * 10)), "x"),        # no such question
        ]})
    write_json(folder / "v2_OpenEnded_mscoco_test-dev2015_questions.json", {
        "data_subtype": "test-dev2015", "questions": [
            {"image_id": 1, "question": "What color is it?", "question_id": 10}]})
    return folder


def test_vqa_val_and_test_dev(tmp_path, make_image, write_json, query, rejects):
    src = _vqa(tmp_path / "vqa", make_image, write_json)
    wh = tmp_path / "wh"
    r = ingest("vqa", source=src, warehouse=wh, workers=1)
    assert r.balanced, r.summary()
    assert r.read == 4 + 7 + 1          # images, questions, orphan annotation
    assert r.new == 3 + 4
    assert query(wh, "SELECT id, source_id, split, width, path FROM images ORDER BY id") == [
        ("vqa:1", "1", "test-dev2015", 20,
         str(src / "test2015" / "COCO_test2015_000000000001.jpg")),
        ("vqa:42", "42", "val2014", 64, str(src / "val2014" / "COCO_val2014_000000000042.jpg")),
        ("vqa:73", "73", "val2014", 32, str(src / "COCO_val2014_000000000073.jpg"))]
    rows = query(wh, "SELECT id, image_id, question, answers, split FROM questions ORDER BY id")
    assert rows == [
        ("vqa:q:10", "vqa:1", "What color is it?", [], "test-dev2015"),
        ("vqa:q:420", "vqa:42", "What is on the table?",
         [{"answer": "food", "count": 1}, {"answer": "pizza", "count": 8},
          {"answer": "slice of pizza", "count": 1}], "val2014"),
        ("vqa:q:421", "vqa:42", "Is it hot?",
         [{"answer": "no", "count": 3}, {"answer": "yes", "count": 7}], "val2014"),
        ("vqa:q:730", "vqa:73", "How many cats?", [{"answer": "2", "count": 10}], "val2014")]
    assert rejects(wh) == {
        "question has no annotation": 1,                               # 731
        "annotation image_id 74 differs from the question's 73": 1,    # 732
        "missing image file": 1,                                       # image 99
        "refers to an unknown or rejected image": 1,                   # question 990
        "annotation refers to an unknown question": 1}                 # annotation 5555
    assert query(wh, "SELECT source_file, record_ref FROM rejects WHERE reason = "
                     "'annotation refers to an unknown question'") == [
        ("v2_mscoco_val2014_annotations.json",
         "v2_mscoco_val2014_annotations.json:annotations[5]")]
    assert ingest("vqa", source=src, warehouse=wh, workers=1).skipped is True


def test_vqa_split_selects_files(tmp_path, make_image, write_json, query, rejects):
    src = _vqa(tmp_path / "vqa", make_image, write_json)
    wh = tmp_path / "wh"
    r = ingest("vqa", source=src, warehouse=wh, split="test-dev2015", workers=1)
    assert r.balanced and r.read == 2 and r.new == 2 and r.rejected == 0, r.summary()
    assert query(wh, "SELECT id, answers, split FROM questions") == [
        ("vqa:q:10", [], "test-dev2015")]
    # a later val ingest adds its own questions to the same warehouse
    r = ingest("vqa", source=src, warehouse=wh, split="val2014", workers=1)
    assert r.balanced, r.summary()
    assert query(wh, "SELECT count(*) FROM questions") == [(4,)]


def test_vqa_missing_questions_file_writes_nothing(tmp_path, make_image, write_json, query):
    src = _vqa(tmp_path / "vqa", make_image, write_json)
    wh = tmp_path / "wh"
    with pytest.raises(InputError, match="_questions.json.*train2014"):
        ingest("vqa", source=src, warehouse=wh, split="train2014")
    assert Warehouse(wh).current().version == 0
    for table in ("images", "questions", "rejects"):
        assert query(wh, f"SELECT count(*) FROM {table}") == [(0,)]


def test_vqa_unparseable_annotations_writes_nothing(tmp_path, make_image, write_json):
    src = _vqa(tmp_path / "vqa", make_image, write_json)
    (src / "v2_mscoco_val2014_annotations.json").write_bytes(b"\xff\xfe not json")
    wh = tmp_path / "wh"
    with pytest.raises(InputError, match="v2_mscoco_val2014_annotations.json"):
        ingest("vqa", source=src, warehouse=wh, workers=1)
    assert Warehouse(wh).current().version == 0
