"""Arrow schemas of every warehouse table: the one place where table shapes are declared.

Each table has a primary-key column (`KEYS`) whose values are stable: derived from source ids or
content, never from row order, so re-ingesting the same input yields the same keys.
"""
import pyarrow as pa

ANSWER = pa.struct([("answer", pa.string()), ("count", pa.int32())])

IMAGES = pa.schema([
    ("id", pa.string()),            # "<dataset>:<source id>"
    ("dataset", pa.string()),
    ("source_id", pa.string()),
    ("split", pa.string()),
    ("path", pa.string()),          # absolute path (or URI) of the image file
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("sha256", pa.string()),        # content hash: joins the same pixels across datasets
    ("ingest_id", pa.string()),
])

CAPTIONS = pa.schema([
    ("id", pa.string()),
    ("image_id", pa.string()),
    ("dataset", pa.string()),
    ("text", pa.string()),
    ("split", pa.string()),
    ("box", pa.list_(pa.float32(), 4)),  # set for region descriptions (Visual Genome), else null
    ("ingest_id", pa.string()),
])

REGIONS = pa.schema([
    ("region_id", pa.string()),
    ("image_id", pa.string()),
    ("dataset", pa.string()),
    ("x1", pa.float32()),           # pixels, top-left origin, x2 > x1, y2 > y1
    ("y1", pa.float32()),
    ("x2", pa.float32()),
    ("y2", pa.float32()),
    ("label", pa.string()),
    ("attributes", pa.list_(pa.string())),
    ("source", pa.string()),        # annotation | detector | grid
    ("score", pa.float32()),        # detector confidence; null for annotations
    ("ingest_id", pa.string()),
])

QUESTIONS = pa.schema([
    ("id", pa.string()),
    ("image_id", pa.string()),
    ("dataset", pa.string()),
    ("question", pa.string()),
    ("answers", pa.list_(ANSWER)),  # distinct answers with how many annotators gave each
    ("split", pa.string()),
    ("ingest_id", pa.string()),
])

RELATIONS = pa.schema([            # Visual Genome relationships between annotated regions
    ("id", pa.string()),
    ("image_id", pa.string()),
    ("dataset", pa.string()),
    ("subject_id", pa.string()),    # regions.region_id
    ("predicate", pa.string()),
    ("object_id", pa.string()),     # regions.region_id
    ("ingest_id", pa.string()),
])

REJECTS = pa.schema([
    ("id", pa.string()),            # hash of (dataset, source file, record reference, reason)
    ("dataset", pa.string()),
    ("source_file", pa.string()),
    ("record_ref", pa.string()),    # where in the source file: line number, json key, row
    ("reason", pa.string()),
    ("raw", pa.string()),           # the record as read (truncated), for a person to inspect
    ("ingest_id", pa.string()),
])

TABLES: dict[str, pa.Schema] = {
    "images": IMAGES,
    "captions": CAPTIONS,
    "regions": REGIONS,
    "questions": QUESTIONS,
    "relations": RELATIONS,
    "rejects": REJECTS,
}

KEYS = {"images": "id", "captions": "id", "regions": "region_id", "questions": "id",
        "relations": "id", "rejects": "id"}

# Tables whose rows belong to an image: an image_id that is neither in the warehouse nor accepted
# in the same ingest makes the row a reject.
IMAGE_CHILDREN = ("captions", "regions", "questions", "relations")

REGION_SOURCES = ("annotation", "detector", "grid")


def register_table(name: str, schema: pa.Schema, key: str) -> None:
    """Feature tables (region vectors, concepts) declare themselves here; nothing else changes."""
    TABLES[name] = schema
    KEYS[name] = key
