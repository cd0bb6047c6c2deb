"""Caption -> concept tuples with token spans (features/text_concepts.py), on the caption templates
of the shapes generator and on COCO-like captions."""
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from helpers import ROOT

from warehouse.ingest.readers import shapes


@pytest.fixture(scope="module", autouse=True)
def _wordnet(nltk_data):
    return nltk_data


def tuples(text):
    from features.text_concepts import extract
    return Counter(m.tuple for m in extract(text))


def test_lemmatiser_prefers_common_analyses():
    from features.text_concepts import lemma_noun, lemma_verb, normalise_label
    assert lemma_noun("circles") == "circle"
    assert lemma_noun("people") == "people"
    assert lemma_noun("glasses") == "glasses"       # WordNet's own noun, not "glass"
    assert lemma_verb("riding") == "ride"           # NLTK's shortest-lemma rule gives "rid"
    assert lemma_verb("singing") == "sing"          # ... and "singe"
    assert lemma_verb("holding") == "hold"
    assert normalise_label("Traffic_Lights") == "traffic light"
    assert normalise_label("  Dogs ") == "dog"
    assert normalise_label(" ") is None


def test_paper_example_with_spans():
    from features.text_concepts import extract, tokenize
    text = "a small red circle left of a blue square"
    assert tokenize(text) == ["a", "small", "red", "circle", "left", "of", "a", "blue", "square"]
    got = {(m.tuple, m.start, m.end) for m in extract(text)}
    assert got == {(("circle",), 3, 4), (("circle", "small"), 1, 4), (("circle", "red"), 2, 4),
                   (("square",), 8, 9), (("square", "blue"), 7, 9),
                   (("circle", "left of", "square"), 3, 9)}
    assert [m.kind for m in extract("a red kite")] == ["object", "attribute"]


def _expected(caption_index: int, objects, text: str) -> Counter:
    def obj(o, size=True):
        out = [(o["shape"],), (o["shape"], o["colour"])]
        return out + [(o["shape"], o["size"])] if size else out
    if caption_index == 2:  # "four shapes: a small red circle, ..."
        return Counter([("shape",)] + [t for o in objects for t in obj(o)])
    # "a [size] colour shape <relation> a [size] colour shape": find the two objects by text
    first, rel, second = None, None, None
    for o in objects:
        for p in objects:
            if o is p:
                continue
            for r in ("left of", "right of", "above", "below"):
                for with_size in (True, False):
                    d = (lambda x: shapes.describe(x) if with_size
                         else f"{x['colour']} {x['shape']}")
                    if text == f"{shapes._article(d(o))} {r} {shapes._article(d(p))}":
                        first, rel, second, size = o, r, p, with_size
    assert first is not None, text
    return Counter(obj(first, size) + obj(second, size)
                   + [(first["shape"], rel, second["shape"])])


def test_every_shapes_caption_template_gives_its_scene_tuples():
    """All three caption templates over 150 generated scenes: the tuples are exactly the scene's
    objects, their colours and sizes, and the stated relation."""
    checked = Counter()
    for i in range(150):
        s = shapes.scene(7, i)
        for k, text in enumerate(shapes.captions(s["objects"], s["rng"])):
            assert tuples(text) == _expected(k, s["objects"], text), text
            checked[k] += 1
    assert checked == {0: 150, 1: 150, 2: 150}


@pytest.mark.parametrize("text, expected", [
    ("a man riding a horse on a beach",
     [("man",), ("horse",), ("beach",), ("man", "ride", "horse"), ("man", "on", "beach")]),
    ("two dogs playing with a frisbee in the park",
     [("dog",), ("frisbee",), ("park",), ("dog", "play with", "frisbee"), ("dog", "in", "park")]),
    ("a flowered umbrella", [("umbrella",), ("umbrella", "flowered")]),
    ("A woman is holding tennis rackets.",
     [("woman",), ("tennis racket",), ("woman", "hold", "tennis racket")]),
    ("a cat sitting on top of a car in front of a house",
     [("cat",), ("car",), ("house",), ("cat", "sit on top of", "car"),
      ("cat", "in front of", "house")]),
    ("a lamp next to a bed to the left of a window",
     [("lamp",), ("bed",), ("window",), ("lamp", "next to", "bed"),
      ("bed", "left of", "window")]),
    ("a man who is riding a horse", [("man",), ("horse",), ("man", "ride", "horse")]),
    ("the bus is red and white", [("bus",), ("bus", "red"), ("bus", "white")]),
    ("several people near an orange truck",
     [("people",), ("truck",), ("truck", "orange"), ("people", "near", "truck")]),
    ("a person on a snowboard jumping over a hill",
     [("person",), ("snowboard",), ("hill",), ("person", "on", "snowboard"),
      ("person", "jump over", "hill")]),
    ("a dog sitting in the driver seat of a car",
     [("dog",), ("driver seat",), ("car",), ("dog", "sit in", "driver seat"),
      ("driver seat", "of", "car")]),
    ("a pizza with cheese and pepperoni sitting on a plate",
     [("pizza",), ("cheese",), ("pepperoni",), ("plate",), ("pizza", "with", "cheese"),
      ("pizza", "with", "pepperoni"), ("pizza", "sit on", "plate")]),
    ("a cat on a mat, a dog on a rug",
     [("cat",), ("mat",), ("dog",), ("rug",), ("cat", "on", "mat"), ("dog", "on", "rug")]),
    ("three birds", [("bird",)]),
    ("", []),
    ("it is.", []),
])
def test_coco_like_captions(text, expected):
    assert tuples(text) == Counter(expected)


def test_relation_span_covers_subject_to_object():
    from features.text_concepts import extract, tokenize
    text = "two dogs playing with a frisbee in the park"
    toks = tokenize(text)
    spans = {m.tuple: toks[m.start:m.end] for m in extract(text)}
    assert spans[("dog", "play with", "frisbee")] == ["dogs", "playing", "with", "a", "frisbee"]
    assert spans[("dog", "in", "park")][0] == "dogs" and spans[("dog", "in", "park")][-1] == "park"
    assert spans[("dog",)] == ["dogs"]


def test_nlp_record_names_tools_and_data():
    from features.nltk_setup import nlp_record
    rec = nlp_record()
    assert rec["wordnet"] == "3.0" and rec["lemmatizer"] == "wordnet.morphy"
    assert rec["tagger"] in ("nltk.averaged_perceptron_tagger_eng", "textblob.PatternTagger")


def test_missing_wordnet_names_the_install_script(monkeypatch):
    import nltk

    from features import nltk_setup

    def not_found(resource, *a, **k):
        raise LookupError(resource)
    monkeypatch.setattr(nltk.data, "find", not_found)
    with pytest.raises(nltk_setup.NltkDataMissing, match="install_nltk_data.sh"):
        nltk_setup.wordnet.__wrapped__()


def test_install_script_is_idempotent(nltk_data):
    script = ROOT / "scripts" / "install_nltk_data.sh"
    out = subprocess.run(["bash", str(script), nltk_data], capture_output=True, text=True,
                         check=True, timeout=30)
    assert "already installed" in out.stdout
    lexnames = (Path(nltk_data) / "corpora" / "wordnet" / "lexnames").read_text().splitlines()
    assert len(lexnames) == 45 and lexnames[5] == "05\tnoun.animal\t1"
