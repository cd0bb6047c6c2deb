"""Table macros every catalog connection defines: users' questions are one SQL call in `mvp sql`
("SELECT * FROM top_concepts(NULL, 'object', 10)"), and concept_queries.py runs the same SQL.
`vocab_id` NULL means the only vocabulary; with several, pass one (left NULL, macros return nothing)."""

# (SQL evaluates this even when vocab_id is given, so it cannot raise: with several
# vocabularies and no vocab_id it is NULL and the macro returns no rows.)
VOCAB = """(SELECT CASE WHEN count(DISTINCT vocab) = 1 THEN min(vocab) END FROM concepts)"""


MACROS = {
    "top_concepts": ("vocab_id, kind_filter, n", f"""
        SELECT id, kind, text, side, caption_count, image_count FROM concepts
        WHERE vocab = coalesce(vocab_id, {VOCAB}) AND (kind_filter IS NULL OR kind = kind_filter)
        ORDER BY image_count DESC, caption_count DESC, text LIMIT n"""),
    "captions_with_concept": ("vocab_id, concept_text", f"""
        SELECT cc.caption_id, c.image_id, c.text, cc.token_start, cc.token_end
        FROM concepts k
        JOIN caption_concepts cc ON cc.vocab = k.vocab AND cc.concept_id = k.id
        JOIN captions c ON c.id = cc.caption_id
        WHERE k.vocab = coalesce(vocab_id, {VOCAB}) AND k.text = lower(trim(concept_text))
        ORDER BY cc.caption_id, cc.token_start"""),
    "images_with_concept": ("vocab_id, concept_text", f"""
        WITH k AS (SELECT vocab, id FROM concepts WHERE vocab = coalesce(vocab_id, {VOCAB})
                   AND text = lower(trim(concept_text))),
        t AS (SELECT c.image_id, count(DISTINCT cc.caption_id) AS captions
              FROM caption_concepts cc JOIN k ON cc.vocab = k.vocab AND cc.concept_id = k.id
              JOIN captions c ON c.id = cc.caption_id GROUP BY c.image_id),
        v AS (SELECT ic.image_id,
                     string_agg(DISTINCT ic.source, ',' ORDER BY ic.source) AS sources
              FROM image_concepts ic JOIN k ON ic.vocab = k.vocab AND ic.concept_id = k.id
              GROUP BY ic.image_id)
        SELECT image_id,
               CASE WHEN t.image_id IS NULL THEN 'visual'
                    WHEN v.image_id IS NULL THEN 'text' ELSE 'both' END AS side,
               coalesce(t.captions, 0) AS captions, v.sources
        FROM t FULL OUTER JOIN v USING (image_id)
        ORDER BY image_id"""),
    "concept_cooccurrence": ("vocab_id, n", f"""
        WITH voc AS (SELECT coalesce(vocab_id, {VOCAB}) AS id),
        t AS (SELECT DISTINCT c.image_id, cc.concept_id
              FROM caption_concepts cc JOIN captions c ON c.id = cc.caption_id
              WHERE cc.vocab = (SELECT id FROM voc)),
        v AS (SELECT DISTINCT image_id, concept_id FROM image_concepts  -- ground truth only
              WHERE vocab = (SELECT id FROM voc) AND source <> 'zero-shot'),
        pairs AS (SELECT t.concept_id AS text_id, v.concept_id AS visual_id,
                         count(*) AS images
                  FROM t JOIN v USING (image_id) GROUP BY ALL)
        SELECT kt.text AS text_concept, kv.text AS visual_concept, p.images FROM pairs p
        JOIN concepts kt ON kt.vocab = (SELECT id FROM voc) AND kt.id = p.text_id
        JOIN concepts kv ON kv.vocab = (SELECT id FROM voc) AND kv.id = p.visual_id
        ORDER BY p.images DESC, kt.text, kv.text LIMIT n"""),
}


MACROS["nearest_regions"] = ("fs, query_region, k", """
    WITH q AS (SELECT vector FROM region_features
               WHERE feature_set = fs AND region_id = query_region LIMIT 1),
         d AS (SELECT dtype FROM feature_sets WHERE id = fs LIMIT 1)
    SELECT r.region_id, r.image_id, r.label,
           vector_cosine(r.vector, (SELECT vector FROM q), (SELECT dtype FROM d)) AS cosine
    FROM region_features r
    WHERE r.feature_set = fs AND r.region_id <> query_region AND EXISTS (SELECT 1 FROM q)
    ORDER BY cosine DESC, r.region_id LIMIT k""")


def define_macros(con) -> None:
    from duckdb.sqltypes import BLOB, FLOAT, VARCHAR

    from warehouse.vectors import cosine_arrow
    con.create_function("vector_cosine", cosine_arrow, [BLOB, BLOB, VARCHAR], FLOAT,
                        type="arrow", side_effects=False)
    for name, (params, body) in MACROS.items():
        con.execute(f"CREATE OR REPLACE TEMP MACRO {name}({params}) AS TABLE {body}")
