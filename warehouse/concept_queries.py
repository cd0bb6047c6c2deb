"""Questions about the concept vocabulary (features/vocabulary.py), as functions over a catalog
connection. User values are bound as parameters (`?`), never spliced into SQL text.

Every function takes `vocab`: the vocabulary id to read. Left None, the warehouse must hold
exactly one vocabulary (several would mix incompatible ids); with several, pass one (the latest
is features.vocabulary.latest_vocab(warehouse))."""
from __future__ import annotations

import duckdb


def resolve_vocab(con: duckdb.DuckDBPyConnection, vocab: str | None) -> str | None:
    """`vocab` itself, or the only vocabulary in the warehouse (None when there is none)."""
    if vocab is not None:
        return vocab
    found = [r[0] for r in con.execute(
        "SELECT DISTINCT vocab FROM concepts ORDER BY vocab").fetchall()]
    if len(found) > 1:
        raise ValueError(f"the warehouse holds {len(found)} concept vocabularies "
                         f"({', '.join(found)}): pass vocab=")
    return found[0] if found else None


def top_concepts(con: duckdb.DuckDBPyConnection, kind: str | None = None,
                 vocab: str | None = None, limit: int = 20) -> list[tuple]:
    """(id, kind, text, side, caption_count, image_count), most images first; `kind` is object,
    attribute or relation (None: all). Image count is the measure shared by text and visual
    concepts (a visual-only concept has no captions)."""
    return con.execute(
        "SELECT id, kind, text, side, caption_count, image_count FROM concepts "
        "WHERE vocab = ? AND (? IS NULL OR kind = ?) "
        "ORDER BY image_count DESC, caption_count DESC, text LIMIT ?",
        [resolve_vocab(con, vocab), kind, kind, limit]).fetchall()


def captions_with_concept(con: duckdb.DuckDBPyConnection, concept_text: str,
                          vocab: str | None = None) -> list[tuple]:
    """(caption id, image id, caption text, token_start, token_end) of every mention of the
    concept written as `concept_text` ("circle", "circle red", "circle left of square")."""
    return con.execute("""
        SELECT cc.caption_id, c.image_id, c.text, cc.token_start, cc.token_end
        FROM concepts k
        JOIN caption_concepts cc ON cc.vocab = k.vocab AND cc.concept_id = k.id
        JOIN captions c ON c.id = cc.caption_id
        WHERE k.vocab = ? AND k.text = lower(trim(?))
        ORDER BY cc.caption_id, cc.token_start""",
                       [resolve_vocab(con, vocab), concept_text]).fetchall()


def images_with_concept(con: duckdb.DuckDBPyConnection, concept_text: str,
                        vocab: str | None = None) -> list[tuple]:
    """(image id, side, captions mentioning it, visual sources) of images where the concept
    appears: side is "text" (a caption mentions it), "visual" (a region is labelled with it,
    sources such as "annotation" or "annotation,detector") or "both"."""
    return con.execute("""
        WITH k AS (SELECT vocab, id FROM concepts WHERE vocab = ? AND text = lower(trim(?))),
        t AS (SELECT c.image_id, count(DISTINCT cc.caption_id) AS captions
              FROM caption_concepts cc JOIN k ON cc.vocab = k.vocab AND cc.concept_id = k.id
              JOIN captions c ON c.id = cc.caption_id GROUP BY c.image_id),
        v AS (SELECT ic.image_id, string_agg(DISTINCT ic.source, ',' ORDER BY ic.source) AS sources
              FROM image_concepts ic JOIN k ON ic.vocab = k.vocab AND ic.concept_id = k.id
              GROUP BY ic.image_id)
        SELECT image_id,
               CASE WHEN t.image_id IS NULL THEN 'visual'
                    WHEN v.image_id IS NULL THEN 'text' ELSE 'both' END AS side,
               coalesce(t.captions, 0) AS captions, v.sources
        FROM t FULL OUTER JOIN v USING (image_id)
        ORDER BY image_id""", [resolve_vocab(con, vocab), concept_text]).fetchall()


def concept_cooccurrence(con: duckdb.DuckDBPyConnection, vocab: str | None = None,
                         limit: int = 50) -> list[tuple]:
    """(text concept, visual concept, images): how many images have a caption mentioning the
    text concept and a region labelled with the visual concept, most first. The alignment
    signal MVP learns from: which phrases go with which tags."""
    return con.execute("""
        WITH t AS (SELECT DISTINCT c.image_id, cc.concept_id
                   FROM caption_concepts cc JOIN captions c ON c.id = cc.caption_id
                   WHERE cc.vocab = $vocab),
        v AS (SELECT DISTINCT image_id, concept_id FROM image_concepts WHERE vocab = $vocab),
        pairs AS (SELECT t.concept_id AS text_id, v.concept_id AS visual_id,
                         count(*) AS images
                  FROM t JOIN v USING (image_id) GROUP BY ALL)
        SELECT kt.text, kv.text, p.images FROM pairs p
        JOIN concepts kt ON kt.vocab = $vocab AND kt.id = p.text_id
        JOIN concepts kv ON kv.vocab = $vocab AND kv.id = p.visual_id
        ORDER BY p.images DESC, kt.text, kv.text LIMIT $limit""",
                       {"vocab": resolve_vocab(con, vocab), "limit": limit}).fetchall()
