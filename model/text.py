"""How text becomes ids, the one place the training data, VQA and serving paths build it: CLIP BPE per
word, captions, tags, VQA questions, and the cut of a long request to what the model can read."""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import lru_cache

import torch

from features.text_concepts import tokenize
from model.batch import pad_rows
from model.config import ModelConfig

MAX_CONCEPTS = 5  # paper: 35 caption tokens + 5 concepts


@lru_cache(maxsize=1)
def bpe_tokenizer():
    """OpenCLIP's CLIP BPE tokenizer (ships with open_clip, no download)."""
    import open_clip
    return open_clip.get_tokenizer("ViT-B-32")


@lru_cache(maxsize=200_000)
def bpe(word: str) -> tuple[int, ...]:
    """BPE ids of one word or label, without sot/eot."""
    return tuple(bpe_tokenizer().encode(word))


def caption_tokens(text: str, spans: list[tuple[int, int]], budget: int
                   ) -> tuple[list[int], list[tuple[int, int]]]:
    """BPE ids of the caption's whole words that fit in `budget` tokens, and the word spans
    mapped to [start, end) positions in `[CLS] + ids` (clipped to the kept words; empty,
    start == end, when the span's first word was cut)."""
    ids: list[int] = []
    starts: list[int] = []   # BPE position (with [CLS] at 0) of each kept word's first piece
    for word in tokenize(text):
        pieces = bpe(word)
        if len(ids) + len(pieces) > budget:
            break
        starts.append(1 + len(ids))
        ids.extend(pieces)
    starts.append(1 + len(ids))  # one past the last kept word
    kept = len(starts) - 1
    mapped = [(starts[min(s, kept)], starts[min(max(e, s), kept)]) for s, e in spans]
    return ids, mapped


def caption_input(text: str, mentions, cfg: ModelConfig
                  ) -> tuple[list[int], list[int], list[tuple[int, int]], list[int]]:
    """One caption as the model reads it: (`[CLS]` + word BPE ids, concept ids offset by
    cfg.concept_offset, their BPE spans, the chosen concept ids). `mentions`: (concept id, word
    start, word end) in caption order; one entry per concept (its first mention), at most
    MAX_CONCEPTS, leaving room for at least one word; whole words fill the rest of
    max_text_len. The data path and the serving model both build text here."""
    chosen: list[tuple[int, int, int]] = []
    for c, s, e in mentions:
        if len(chosen) < MAX_CONCEPTS and all(c != x for x, _, _ in chosen):
            chosen.append((c, s, e))
    L = cfg.max_text_len
    chosen = chosen[:max(0, L - 3)]
    ids, mapped = caption_tokens(text, [(s, e) for _, s, e in chosen],
                                 budget=L - 2 - len(chosen))
    return ([cfg.cls_id, *ids], [cfg.concept_offset + c for c, _, _ in chosen], mapped,
            [c for c, _, _ in chosen])


def tag_sequence(labels, cfg: ModelConfig) -> list[int]:
    """`[CLS] BPE of each distinct label (first-seen order)... [SEP]`, cut to max_tags."""
    ids = [t for label in dict.fromkeys(x for x in labels if x) for t in bpe(label)]
    return [cfg.cls_id, *ids[:cfg.max_tags - 2], cfg.sep_id]


def label_word(label: str | None) -> int:
    """A region label as one word target: its first BPE piece (IGNORE_LABEL for none), what
    MAMO's explicit target asks the masked region to recover."""
    pieces = bpe(label) if label else ()
    return pieces[0] if pieces else IGNORE_LABEL


IGNORE_LABEL = -100   # model/losses.py IGNORE: a region without a label is no target


def question_tokens(question: str, tag_words: list[int], cfg: ModelConfig,
                    concept_ids: list[int] = ()) -> list[int]:
    """`[CLS] question words, its phrase concepts [SEP] tag words [SEP]` within max_text_len
    (METHOD.md: concepts in the text as the authors' VQA, tags appended to the question).
    Priority when it does not fit: concepts (at most max_text_len // 4), whole question words,
    then tags (tag_words: the image's tag BPE ids; concept_ids: already offset into the shared
    table). Fine-tuning and serving both use it."""
    L = cfg.max_text_len
    concepts = list(concept_ids[:L // 4])
    words, _ = caption_tokens(question, [], budget=L - 3 - len(concepts))  # [CLS] [SEP] [SEP]
    tags = list(tag_words[:L - 3 - len(words) - len(concepts)])
    tail = [cfg.sep_id, *tags, cfg.sep_id] if tags else [cfg.sep_id]
    return [cfg.cls_id, *words, *concepts, *tail]


@dataclass
class EncodedText:
    token_ids: list[int]          # [CLS] + caption BPE ids
    concept_ids: list[int]        # offset by cfg.concept_offset
    concepts: list[str] | None    # their text; None when NLTK data is missing


CHARS_PER_TOKEN = 32   # the longest CLIP BPE token is 32 bytes: no token covers more characters
_WORD = re.compile(r"\S+")


def readable(text: str, cfg: ModelConfig) -> str:
    """The start of `text` that the model can read, so a long request costs what a short one
    does. The model reads at most max_text_len tokens; a whitespace-separated word is at least
    one token and a token covers at most CHARS_PER_TOKEN characters, so the first max_text_len
    words within max_text_len * (CHARS_PER_TOKEN + 1) characters (a space each) hold all it
    reads, plus two words of context for the tagger. A run of spaces becomes its first
    character (the tokenizer splits on either alike). Concepts mentioned only past the cut are
    dropped: the model cannot read their words."""
    limit, used, kept, end = cfg.max_text_len * (CHARS_PER_TOKEN + 1), 0, [], 0
    for word in itertools.islice(_WORD.finditer(text), cfg.max_text_len):
        piece = text[end:end + 1] if word.start() > end else ""   # the space before the word
        used += len(piece) + len(word.group())
        if used > limit:   # this word would not fit in max_text_len tokens
            break
        kept.append(piece + word.group())
        end = word.end()
    return "".join(kept)


def text_batch(cfg: ModelConfig, texts: list[EncodedText]) -> tuple[torch.Tensor, torch.Tensor]:
    """encode_text's (ids, mask) for the texts: each row `[CLS] words... concepts... [SEP]` with
    no padding between its parts, so a batch is never longer than max_text_len (a long caption
    next to one with many concepts would be, lined up by assemble_text); encode_text counts
    positions over real tokens, so a row reads as it would alone."""
    return pad_rows([torch.tensor([*t.token_ids, *t.concept_ids, cfg.sep_id], dtype=torch.long)
                     for t in texts], cfg.pad_id)
