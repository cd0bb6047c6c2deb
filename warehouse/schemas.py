"""Arrow schemas of every warehouse table: the one place where table shapes are declared. Each
table's primary-key values (`KEYS`) derive from source ids or content, never from row order, so
re-ingesting the same input yields the same keys."""
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

ENTAILMENT_LABELS = ("entailment", "neutral", "contradiction")  # the class order models use

ENTAILMENT = pa.schema([           # visual entailment (SNLI-VE, shapes): a hypothesis about an image
    ("id", pa.string()),
    ("image_id", pa.string()),
    ("dataset", pa.string()),
    ("hypothesis", pa.string()),
    ("label", pa.string()),         # one of ENTAILMENT_LABELS
    ("split", pa.string()),
    ("ingest_id", pa.string()),
])

REFERRING = pa.schema([            # referring expressions (RefCOCO/+/g, shapes): one per expression
    ("id", pa.string()),
    ("image_id", pa.string()),
    ("dataset", pa.string()),
    ("region_id", pa.string()),     # regions.region_id of the object referred to (its box)
    ("expression", pa.string()),
    ("split", pa.string()),
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

# ---- feature store (issue: feature store) ------------------------------------------------------
# Vectors are raw little-endian bytes (float16 or float32, as the feature set says) so a reader
# turns a column into an array with one np.frombuffer, no per-value Parquet list decoding.
FEATURE_SETS = pa.schema([
    ("id", pa.string()),            # hash of every field below but `created`
    ("kind", pa.string()),          # extracted | imported
    ("backbone", pa.string()),      # OpenCLIP model name, or "vinvl" for imported features
    ("pretrained", pa.string()),    # tag, checkpoint file name, or "none" (random init)
    ("weights_sha256", pa.string()),
    ("box_source", pa.string()),    # policy: regions table, else grid
    ("image_size", pa.int32()),
    ("dim", pa.int32()),            # vector length
    ("dtype", pa.string()),         # float16 | float32
    ("max_regions", pa.int32()),
    ("grid", pa.int32()),           # grid cells per side for images without boxes
    ("code_version", pa.string()),  # extraction code version (bumped when vectors would change)
    ("created", pa.string()),
])

REGION_FEATURES = pa.schema([
    ("feature_set", pa.string()),
    ("image_id", pa.string()),
    ("region_id", pa.string()),     # regions.region_id, or "<image id>#grid<k>" for grid cells
    ("box_source", pa.string()),    # annotation | detector | grid | imported
    ("label", pa.string()),
    ("score", pa.float32()),
    ("x1", pa.float32()), ("y1", pa.float32()), ("x2", pa.float32()), ("y2", pa.float32()),
    ("geometry", pa.list_(pa.float32(), 6)),  # [x1/W, y1/H, x2/W, y2/H, w/W, h/H]
    ("vector", pa.binary()),
    ("build_id", pa.string()),
])

IMAGE_FEATURES = pa.schema([        # the global image vector of each image in a feature set
    ("feature_set", pa.string()),
    ("image_id", pa.string()),
    ("vector", pa.binary()),
    ("build_id", pa.string()),
])

CONCEPTS = pa.schema([
    ("vocab", pa.string()),         # vocabulary version id
    ("id", pa.int32()),             # stable within a vocabulary; offset by the word vocabulary
    ("kind", pa.string()),          # object | attribute | relation
    ("tuple", pa.list_(pa.string())),  # (object) | (object, attribute) | (subject, rel, object)
    ("text", pa.string()),          # "circle", "circle red", "circle left of square"
    ("side", pa.string()),          # text | visual | both
    ("caption_count", pa.int64()),
    ("image_count", pa.int64()),
])

CAPTION_CONCEPTS = pa.schema([
    ("vocab", pa.string()),
    ("caption_id", pa.string()),
    ("concept_id", pa.int32()),
    ("token_start", pa.int32()),    # word-token span [start, end) in the caption's tokens
    ("token_end", pa.int32()),
])

IMAGE_CONCEPTS = pa.schema([
    ("vocab", pa.string()),
    ("image_id", pa.string()),
    ("concept_id", pa.int32()),
    ("source", pa.string()),        # annotation | detector | zero-shot
    ("score", pa.float32()),        # null for ground truth
])

# Zero-shot tags of regions (features/zero_shot.py): predictions, never ground truth. Their
# per-image summary is in image_concepts with source "zero-shot".
REGION_TAGS = pa.schema([
    ("tagging", pa.string()),       # id of the tagging parameters (see features/zero_shot.py)
    ("vocab", pa.string()),
    ("feature_set", pa.string()),
    ("image_id", pa.string()),
    ("region_id", pa.string()),     # region_features.region_id
    ("concept_id", pa.int32()),
    ("score", pa.float32()),        # cosine of the region vector and the concept's prompt
    ("rank", pa.int32()),           # 1 = the region's best concept of this kind
])

TABLES: dict[str, pa.Schema] = {
    "images": IMAGES,
    "captions": CAPTIONS,
    "regions": REGIONS,
    "questions": QUESTIONS,
    "relations": RELATIONS,
    "entailment": ENTAILMENT,
    "referring": REFERRING,
    "rejects": REJECTS,
    "feature_sets": FEATURE_SETS,
    "region_features": REGION_FEATURES,
    "image_features": IMAGE_FEATURES,
    "concepts": CONCEPTS,
    "caption_concepts": CAPTION_CONCEPTS,
    "image_concepts": IMAGE_CONCEPTS,
    "region_tags": REGION_TAGS,
}

# Primary keys of the ingested tables (feature-store tables are keyed by their build: a feature
# set or vocabulary id plus the row's subject).
KEYS = {"images": "id", "captions": "id", "regions": "region_id", "questions": "id",
        "relations": "id", "entailment": "id", "referring": "id", "rejects": "id"}

# What a compacted part is sorted by (stably, so rows of one group keep their stored order, e.g.
# an image's regions): the columns among these a table has, else its key. Scans that filter on
# them then skip whole row groups.
GROUP_COLUMNS = ("feature_set", "vocab", "tagging", "image_id", "caption_id")


def sort_columns(table: str) -> list[str]:
    names = TABLES[table].names
    return [c for c in GROUP_COLUMNS if c in names] or [KEYS.get(table, "id")]


# Tables whose rows belong to an image: an image_id that is neither in the warehouse nor accepted
# in the same ingest makes the row a reject.
IMAGE_CHILDREN = ("captions", "regions", "questions", "relations", "entailment", "referring")

REGION_SOURCES = ("annotation", "detector", "grid")
