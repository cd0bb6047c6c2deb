"""Questions about the concept vocabulary as functions over a catalog connection: the SQL is
warehouse/macros.py's, user values are bound as parameters (`?`). `vocab` None needs exactly one
vocabulary in the warehouse; with several, pass one (features.vocabulary.latest_vocab)."""
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
    return con.execute("SELECT * FROM top_concepts(?, ?, ?)",
                       [resolve_vocab(con, vocab), kind, limit]).fetchall()


def captions_with_concept(con: duckdb.DuckDBPyConnection, concept_text: str,
                          vocab: str | None = None) -> list[tuple]:
    """(caption id, image id, caption text, token_start, token_end) of every mention of the
    concept written as `concept_text` ("circle", "circle red", "circle left of square")."""
    return con.execute("SELECT * FROM captions_with_concept(?, ?)",
                       [resolve_vocab(con, vocab), concept_text]).fetchall()


def images_with_concept(con: duckdb.DuckDBPyConnection, concept_text: str,
                        vocab: str | None = None) -> list[tuple]:
    """(image id, side, captions mentioning it, visual sources) of images where the concept
    appears: side is "text" (a caption mentions it), "visual" (a region is labelled with it,
    sources such as "annotation" or "annotation,detector") or "both"."""
    return con.execute("SELECT * FROM images_with_concept(?, ?)",
                       [resolve_vocab(con, vocab), concept_text]).fetchall()


def concept_cooccurrence(con: duckdb.DuckDBPyConnection, vocab: str | None = None,
                         limit: int = 50) -> list[tuple]:
    """(text concept, visual concept, images): how many images have a caption mentioning the
    text concept and a region labelled with the visual concept, most first. The alignment
    signal MVP learns from: which phrases go with which tags."""
    return con.execute("SELECT * FROM concept_cooccurrence(?, ?)",
                       [resolve_vocab(con, vocab), limit]).fetchall()
