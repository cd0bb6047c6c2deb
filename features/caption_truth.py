"""Which other images a caption is provably true of, read from labelled regions (label, attributes,
box): ITM's false-negative filter drops such pairs, and its diagnostics count how often the chosen
negatives are such pairs. A caption is checked only when every word of it is grounded: an object
phrase ("a small red circle": words among the regions' labels and attributes), two phrases joined
by a spatial relation, or "<number> <things>: <phrase>, ... and <phrase>". Anything else (free
text, unlabelled images) is "unknown" and never counts as a match, so the filter only drops pairs
that the annotations prove to match."""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from warehouse.ingest.readers.shapes import NUMBER_WORDS, relation

RELATIONS = ("left of", "right of", "above", "below")
ARTICLES = frozenset({"a", "an", "the"})
_RELATION = re.compile(r"^(.+?) (" + "|".join(RELATIONS) + r") (.+)$")
_COUNT = re.compile(r"^(\w+) \w+: (.+)$")


@dataclass(frozen=True)
class Region:
    words: frozenset[str]             # its label and attributes
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class Claim:
    """What a caption says: `phrases` (word sets) each of a distinct region; with `relation`, the
    first phrase's region stands so to the second's; with `count`, the image has exactly that many
    regions and the phrases are all of them."""
    phrases: tuple[frozenset[str], ...]
    relation: str | None = None
    count: int | None = None

    @property
    def words(self) -> frozenset[str]:
        return frozenset().union(*self.phrases)


def _phrase(text: str, grounded: frozenset[str]) -> frozenset[str] | None:
    words = text.split()
    if words and words[0] in ARTICLES:
        words = words[1:]
    if not words or not set(words) <= grounded:
        return None
    return frozenset(words)


def parse(text: str, grounded: frozenset[str]) -> Claim | None:
    """The claim of a caption whose every word is grounded (`grounded`: the labels and attributes
    of the data's labelled regions); None when any part is not."""
    text = " ".join(text.lower().replace(".", " ").split())
    if m := _COUNT.match(text):
        if m.group(1) not in NUMBER_WORDS:
            return None
        items = re.split(r", | and ", m.group(2))
        phrases = tuple(_phrase(item, grounded) for item in items)
        if None in phrases:
            return None
        return Claim(phrases, count=NUMBER_WORDS.index(m.group(1)))
    if m := _RELATION.match(text):
        a, b = _phrase(m.group(1), grounded), _phrase(m.group(3), grounded)
        return Claim((a, b), relation=m.group(2)) if a and b else None
    a = _phrase(text, grounded)
    return Claim((a,)) if a else None


def _assign(phrases: Sequence[frozenset[str]], regions: Sequence[Region], used: frozenset[int]
            ) -> bool:
    """Each phrase to a distinct region whose words include it (backtracking: a few phrases)."""
    if not phrases:
        return True
    return any(phrases[0] <= r.words and _assign(phrases[1:], regions, used | {k})
               for k, r in enumerate(regions) if k not in used)


def holds(claim: Claim, regions: Sequence[Region]) -> bool:
    """Whether the regions prove the claim (the relation by the rule the shapes captions follow)."""
    if claim.count is not None:
        return len(regions) == claim.count and _assign(claim.phrases, regions, frozenset())
    if claim.relation is None:
        return any(claim.phrases[0] <= r.words for r in regions)
    first, second = claim.phrases
    return any(first <= a.words and second <= b.words and
               relation({"box": a.box}, {"box": b.box}) == claim.relation
               for i, a in enumerate(regions) for j, b in enumerate(regions) if i != j)


def also_true(captions: Iterable[tuple[str, str]], regions: dict[str, list[Region]]
              ) -> list[list[str]]:
    """For each (caption text, its image id): the ids of the OTHER images that the caption is
    provably true of. Candidates come from a word → images index, so each caption is checked
    only against images that hold all its words, not against the whole corpus."""
    grounded = frozenset(w for rs in regions.values() for r in rs for w in r.words)
    images_with: dict[str, set[str]] = {}
    for image_id, rs in regions.items():
        for word in {w for r in rs for w in r.words}:
            images_with.setdefault(word, set()).add(image_id)
    out = []
    for text, own in captions:
        claim = parse(text, grounded)
        if claim is None:
            out.append([])
            continue
        candidates = set.intersection(*(images_with[w] for w in claim.words)) - {own}
        out.append(sorted(i for i in candidates if holds(claim, regions[i])))
    return out


def labelled_regions(con, image_table: str) -> dict[str, list[Region]]:
    """The labelled regions of the images named in `image_table` (a relation with an image_id
    column on the catalog connection `con`), by image id."""
    rows = con.sql(
        f"SELECT image_id, label, attributes, x1, y1, x2, y2 FROM regions "
        f"SEMI JOIN {image_table} USING (image_id) WHERE label IS NOT NULL "
        f"ORDER BY image_id, region_id").fetchall()
    out: dict[str, list[Region]] = {}
    for image_id, label, attributes, *box in rows:
        words = " ".join([label, *(attributes or ())]).lower().split()   # "traffic light"
        out.setdefault(image_id, []).append(Region(frozenset(words), tuple(box)))
    return out
