"""Request text -> model ids with a packaged concept vocabulary, built the way the pre-training
data path builds them (model/text.py `caption_input`)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from features.nltk_setup import NltkDataMissing, nlp_record
from features.text_concepts import extract
from model.config import ModelConfig
from model.text import EncodedText, caption_input
from warehouse.catalog import connect


class ConceptVocabulary:
    def __init__(self, vocab: str, ids: dict[tuple[str, ...], int], texts: dict[int, str],
                 nlp: dict | None):
        self.vocab, self.ids, self.texts, self.nlp = vocab, ids, texts, nlp

    @classmethod
    def from_warehouse(cls, wh, vocab: str) -> "ConceptVocabulary":
        with connect(wh) as con:
            rows = con.execute("SELECT id, tuple, text FROM concepts WHERE vocab = ? ORDER BY id",
                               [vocab]).fetchall()
        if not rows:
            raise LookupError(f"no concept vocabulary {vocab!r} in warehouse {wh.root}")
        builds = [b for b in wh.current().builds
                  if b.get("kind") == "concepts" and b.get("vocab") == vocab]
        return cls(vocab, {tuple(t): i for i, t, _ in rows}, {i: x for i, _, x in rows},
                   builds[-1].get("nlp") if builds else None)

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps({"vocab": self.vocab, "nlp": self.nlp, "concepts": [
            [i, list(t), self.texts[i]] for t, i in sorted(self.ids.items(), key=lambda x: x[1])
        ]}))
        return path

    @classmethod
    def read(cls, path) -> "ConceptVocabulary":
        d = json.loads(Path(path).read_text())
        vocab = cls(d["vocab"], {tuple(t): i for i, t, _ in d["concepts"]},
                    {i: x for i, _, x in d["concepts"]}, d["nlp"])
        try:
            here = nlp_record()
        except NltkDataMissing:
            here = None
            warnings.warn("NLTK WordNet data is missing: captions are served without concepts "
                          "(see model/training/concepts.py)")
        if here and vocab.nlp and here.get("tagger") != vocab.nlp.get("tagger"):
            warnings.warn(f"concepts were built with tagger {vocab.nlp.get('tagger')}, this "
                          f"server has {here.get('tagger')}: caption tuples may differ")
        return vocab

    def encode(self, text: str, cfg: ModelConfig) -> EncodedText:
        """The caption with its NLTK mentions that are in the vocabulary, placed as training places
        them. Without NLTK data no tuple can be matched (WordNet lemmatises the heads): the words
        only, `concepts` None, as a training caption with no known tuple looks to the model."""
        try:
            mentions = extract(text)
        except NltkDataMissing:
            mentions = None
        found = sorted((m.start, m.end, self.ids[m.tuple]) for m in mentions or ()
                       if m.tuple in self.ids)
        tokens, concept_ids, _, chosen = caption_input(text, [(c, s, e) for s, e, c in found],
                                                       cfg)
        return EncodedText(tokens, concept_ids,
                           None if mentions is None else [self.texts[c] for c in chosen])


