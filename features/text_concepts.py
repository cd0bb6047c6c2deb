"""Caption -> phrase concepts: the tuples of METHOD.md, each with the word-token span it covers.
    "a small red circle left of a blue square"
      -> (circle) (circle, small) (circle, red) (square) (square, blue) (circle, left of, square)"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import nltk
from nltk.tokenize import NLTKWordTokenizer

from features.nltk_setup import has_perceptron_tagger, wordnet

KINDS = {1: "object", 2: "attribute", 3: "relation"}

# Multiword relations, longest first when matched; the value is the relation's canonical text
# (paraphrases of one spatial relation become one concept).
RELATION_PHRASES = {
    ("to", "the", "left", "of"): "left of", ("on", "the", "left", "of"): "left of",
    ("to", "the", "right", "of"): "right of", ("on", "the", "right", "of"): "right of",
    ("left", "of"): "left of", ("right", "of"): "right of",
    ("on", "top", "of"): "on top of", ("in", "front", "of"): "in front of",
    ("in", "back", "of"): "behind", ("next", "to"): "next to", ("close", "to"): "close to",
    ("across", "from"): "across from", ("out", "of"): "out of", ("away", "from"): "away from",
    ("inside", "of"): "inside", ("in", "between"): "between", ("on", "to"): "onto",
}
MAX_PHRASE = max(map(len, RELATION_PHRASES))
# Spatial prepositions taggers often read as adjectives, nouns or adverbs ("near/JJ").
SPATIAL_WORDS = frozenset({
    "above", "below", "behind", "near", "under", "underneath", "beneath", "beside", "atop",
    "inside", "outside", "between", "onto", "into", "toward", "towards", "across", "along",
    "around", "against", "over"})
# Colour words are attributes even where a tagger reads them as nouns ("orange/NN square").
COLOURS = frozenset({
    "red", "green", "blue", "yellow", "purple", "orange", "pink", "brown", "black", "white",
    "gray", "grey", "silver", "gold", "golden", "tan", "beige", "teal", "violet", "cyan",
    "magenta", "maroon", "navy"})
NUMBERS = frozenset({
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "dozen", "hundred", "thousand"})
# Adjectives of quantity or reference: not properties of the object.
NOT_ATTRIBUTES = NUMBERS | frozenset({
    "many", "several", "few", "other", "various", "some", "each", "every", "more", "most",
    "much", "same", "different", "such", "certain", "numerous", "multiple", "only", "own",
    "lone", "single", "couple", "next", "last", "first", "second", "third"})
BE = frozenset({"is", "are", "was", "were", "be", "been", "being", "am", "'s", "'re"})
AUXILIARIES = BE | frozenset({"has", "have", "had", "does", "do", "did", "'ve"})

# Stage order matters: noun phrases first, so a participle before a noun ("a parked car") is an
# attribute; predicates next, so "is red" is not read as a relation; relations last.
GRAMMAR = r"""
NP:   {<DT|PDT|PRP\$|CD>*<RB.*>*(<JJ.*|VBN>(<CC|,>?<RB.*>?<JJ.*|VBN>)*)?<NN.*>+}
PRED: {<VBZ|VBP|VBD><RB.*>?<JJ.*>(<CC|,>?<JJ.*>)*}
REL:  {<MD>?<VB.*>*<RB.*>?<VB.*><RP>?<RB.*>?<IN|TO|SP>*}
      {<IN|TO|SP>+}
"""
# words between a noun phrase and the verb that relates it ("a man who is riding a horse")
SKIPPABLE = frozenset({"WDT", "WP"})


class Mention(NamedTuple):
    tuple: tuple[str, ...]
    start: int  # word-token span [start, end) in tokenize(text)
    end: int

    @property
    def kind(self) -> str:
        return KINDS[len(self.tuple)]

    @property
    def text(self) -> str:
        return " ".join(self.tuple)


_TOKENIZER = NLTKWordTokenizer()


def tokenize(text: str) -> list[str]:
    """The word tokens that mention spans index (lower case, NLTK's Treebank-style tokenizer)."""
    return _TOKENIZER.tokenize(text.lower())


@lru_cache(maxsize=1)
def _tagger():
    if has_perceptron_tagger():
        return lambda tokens: [t for _, t in nltk.pos_tag(tokens, lang="eng")]
    from textblob.en import parser  # the lexicon and rules behind TextBlob's PatternTagger
    return lambda tokens: [t for _, t in parser.find_tags(tokens)]


@lru_cache(maxsize=1)
def _chunker() -> nltk.RegexpParser:
    return nltk.RegexpParser(GRAMMAR)


@lru_cache(maxsize=200_000)
def lemma_noun(word: str) -> str:
    """WordNet's first analysis: keeps plurals WordNet lists as their own noun ("glasses",
    "people", "clothes"), else the singular. Unknown words stay as they are."""
    return wordnet().morphy(word, "n") or word


@lru_cache(maxsize=50_000)
def lemma_verb(word: str) -> str:
    """The most used of WordNet's analyses (by tagged-sense counts): NLTK's WordNetLemmatizer
    takes the shortest and turns "riding" into "rid", "singing" into "singe"."""
    wn = wordnet()
    candidates = wn._morphy(word, "v")  # all analyses; the public morphy() returns one
    if not candidates:
        return word
    return max(candidates, key=lambda c: (sum(lem.count() for lem in wn.lemmas(c, "v")),
                                          -candidates.index(c)))


def object_name(words: list[str]) -> str:
    """A compound noun keeps its modifiers and lemmatises its head: "tennis rackets" ->
    "tennis racket" (how multiword region labels such as COCO's "traffic light" read)."""
    return " ".join(words[:-1] + [lemma_noun(words[-1])])


class _Unit(NamedTuple):  # a token, or a multiword relation merged into one
    start: int
    end: int
    word: str
    tag: str


def _units(tokens: list[str], tags: list[str]) -> list[_Unit]:
    units, i, n = [], 0, len(tokens)
    while i < n:
        for size in range(min(MAX_PHRASE, n - i), 1, -1):
            rel = RELATION_PHRASES.get(tuple(tokens[i:i + size]))
            if rel:
                units.append(_Unit(i, i + size, rel, "SP"))
                i += size
                break
        else:
            word, tag = tokens[i], tags[i]
            if word in SPATIAL_WORDS:
                tag = "IN"
            elif word in COLOURS and i + 1 < n and (tags[i + 1][:2] in ("NN", "JJ")
                                                    or tokens[i + 1] in COLOURS):
                tag = "JJ"
            elif word in NUMBERS:
                tag = "CD"
            units.append(_Unit(i, i + 1, word, tag))
            i += 1
    return units


class _NP(NamedTuple):
    head: str
    start: int  # of the head noun(s)
    end: int
    attributes: list[tuple[str, int]]  # (word, token index)


def _noun_phrase(units: list[_Unit]) -> _NP | None:
    nouns = []
    for u in reversed(units):  # the trailing run of nouns is the head
        if not u.tag.startswith("NN"):
            break
        nouns.insert(0, u)
    if not nouns or nouns[-1].word in NUMBERS or not nouns[-1].word.isalpha():
        return None
    attributes = [(u.word, u.start) for u in units[:len(units) - len(nouns)]
                  if (u.tag.startswith("JJ") or u.tag == "VBN")
                  and u.word not in NOT_ATTRIBUTES and u.word.replace("-", "").isalpha()]
    return _NP(object_name([u.word for u in nouns]), nouns[0].start, nouns[-1].end, attributes)


def _relation(units: list[_Unit]) -> tuple[str, bool]:
    """(relation text, whether it has a verb): "is sitting on" -> ("sit on", True)."""
    verbs = [k for k, u in enumerate(units) if u.tag.startswith("VB")]
    # auxiliaries ("is riding", "has been") drop out; a lone "is" leaves the preposition
    main = next((k for k in reversed(verbs) if units[k].word not in AUXILIARIES), None)
    if main is None and verbs and units[verbs[-1]].word not in BE:
        main = verbs[-1]  # "has a hat": a lone "have" is the relation
    words = [] if main is None else [lemma_verb(units[main].word)]
    words += [u.word for u in units[(main + 1 if main is not None else 0):]
              if u.tag in ("IN", "TO", "SP", "RP")]
    return " ".join(words), main is not None


def _chunks(units: list[_Unit]) -> list[tuple[str, object]]:
    """The chunked caption as (label, payload): NP -> _NP, REL -> (text, is_verb),
    PRED -> [(adjective, index)], anything else -> ("O", tag)."""
    items = []
    for label, members in _layout(tuple(u.tag for u in units)):
        if label != "O":
            members = [units[k] for k in members]
            if label == "NP":
                np = _noun_phrase(members)
                items.append(("NP", np) if np else ("O", "NP"))
            elif label == "REL":
                text, is_verb = _relation(members)
                items.append(("REL", (text, is_verb)) if text else ("O", "REL"))
            else:
                items.append(("PRED", [(u.word, u.start) for u in members
                                       if u.tag.startswith("JJ")
                                       and u.word not in NOT_ATTRIBUTES]))
        else:
            items.append(("O", units[members[0]].tag))
    return items


@lru_cache(maxsize=100_000)
def _layout(tags: tuple[str, ...]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The chunks of a tag sequence as (label, unit indices): a pure function of the tags, and
    captions share few distinct tag sequences, so the regexp chunker (most of the cost) runs
    once per sequence."""
    tree = _chunker().parse(list(enumerate(tags)))
    return tuple((node.label(), tuple(k for k, _ in node.leaves())) if isinstance(node, nltk.Tree)
                 else ("O", (node[0],)) for node in tree)


def _previous_np(items, i) -> int | None:
    j = i - 1
    while j >= 0 and items[j][0] == "O" and items[j][1] in SKIPPABLE:
        j -= 1
    return j if j >= 0 and items[j][0] == "NP" else None


def mentions_from_tokens(tokens: list[str]) -> list[Mention]:
    """The concept mentions of tokenised text. POS-tag (features.nltk_setup picks the tagger);
    merge multiword spatial relations ("left of", "in front of", ...) into one unit, since taggers
    read their words as nouns or participles ("left/VBN of"); chunk noun phrases, verbal or
    prepositional relations and copula predicates with GRAMMAR; walk the chunks to emit tuples;
    lemmatise with WordNet.

    Spans are [start, end) token indices: an object covers its head noun(s), an attribute covers
    attribute..head, a relation subject head..object head, so a word masked anywhere inside a
    concept hides that concept (MCR without leakage, METHOD.md).
    """
    if not tokens:
        return []
    units = _units(tokens, _tagger()(tokens))
    items = _chunks(units)
    out: list[Mention] = []
    # Attachment (by item index), the heuristics a parser would replace:
    # - a preposition after the object of a verb attaches to the verb's subject ("a man riding
    #   a horse on a beach" -> (man, on, beach)), except "of", which binds to the nearest noun
    #   ("the seat of a car"); other prepositions attach to the nearest noun;
    # - a verb after a prepositional phrase takes the phrase's subject ("a person on a
    #   snowboard jumping over a hill" -> (person, jump over, hill));
    # - a noun coordinated with the previous one shares its attachment and relation ("a pizza
    #   with cheese and pepperoni sitting on a plate" -> (pizza, with, pepperoni),
    #   (pizza, sit on, plate)), unless a preposition follows it: then it starts a phrase of
    #   its own ("a cat on a mat, a dog on a rug").
    verb_subject_of: dict[int, int] = {}  # a verb's object -> that verb's subject
    anchor: dict[int, int] = {}           # a preposition's object -> the noun it describes
    object_of: dict[int, tuple] = {}      # a relation's object -> (subject, relation text)
    for i, (label, payload) in enumerate(items):
        if label == "NP":
            if (i >= 2 and items[i - 1] in (("O", "CC"), ("O", ",")) and items[i - 2][0] == "NP"
                    and not (i + 1 < len(items) and items[i + 1][0] == "REL"
                             and not items[i + 1][1][1])):
                for links in (anchor, verb_subject_of, object_of):
                    if i - 2 in links:
                        links[i] = links[i - 2]
                if i in object_of:
                    subject, text = object_of[i]
                    s = items[subject][1]
                    out.append(Mention((s.head, text, payload.head), s.start, payload.end))
            out.append(Mention((payload.head,), payload.start, payload.end))
            for word, k in payload.attributes:
                out.append(Mention((payload.head, word), min(k, payload.start), payload.end))
        elif label == "PRED":
            j = _previous_np(items, i)
            if j is not None:
                np = items[j][1]
                for word, k in payload:
                    out.append(Mention((np.head, word), np.start, k + 1))
        elif label == "REL" and i + 1 < len(items) and items[i + 1][0] == "NP":
            j = _previous_np(items, i)
            if j is None:
                continue
            text, is_verb = payload
            if is_verb:
                subject = verb_subject_of[i + 1] = anchor.get(j, j)
            elif text == "of":
                subject = j
            else:
                subject = verb_subject_of.get(j, j)
                anchor[i + 1] = anchor.get(subject, subject)
            object_of[i + 1] = (subject, text)
            s, o = items[subject][1], items[i + 1][1]
            out.append(Mention((s.head, text, o.head), min(s.start, o.start), max(s.end, o.end)))
    return out


@lru_cache(maxsize=65_536)
def extract(text: str) -> tuple[Mention, ...]:
    """The concept mentions of one caption, in order of appearance (captions repeat across a
    corpus, so results are cached)."""
    return tuple(mentions_from_tokens(tokenize(text)))


def normalise_label(label: str) -> str | None:
    """A region label as a visual object concept: lower case, whitespace and underscores
    collapsed, head noun lemmatised like a caption's ("Traffic_Lights" -> "traffic light")."""
    words = label.lower().replace("_", " ").split()
    return object_name(words) if words else None
