"""Import of VinVL's precomputed region features (features.tsv, features.lineidx and optionally
predictions.tsv, as VinVL / Oscar+ release them) into a feature set, as if extracted here, so the
paper's own features can be trained on. features.tsv has one line per image:
`<image key>\\t<num_boxes>\\t<base64 of float32[num_boxes x 2054]>`, each box row the 2048-d RoI
feature then the 6-d geometry [x1/W, y1/H, x2/W, y2/H, w/W, h/H]."""
from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from features.feature_sets import FeatureSetSpec, register_feature_set
from warehouse import vectors
from warehouse.catalog import connect
from warehouse.hashing import file_sha256
from warehouse.ingest.emitter import stable_id
from warehouse.ingest.readers.vinvl_predictions import image_id_for
from warehouse.ingest.sources import InputError, require_file
from warehouse.publish import new_build, publish_new_rows
from warehouse.schemas import IMAGE_FEATURES, REGION_FEATURES, REJECTS
from warehouse.store import Snapshot, Warehouse

WIDTH = 2054                 # floats per box in features.tsv
DIM = WIDTH - 6              # the RoI feature; the last 6 floats are the geometry
DATASET = "vinvl-features"   # the rejects' dataset column
BUILD_KIND = "vinvl-features"
IMPORT_CODE_VERSION = "1"    # bump when this code would write different rows for the same files
HEAD_BYTES = 1024            # read at each line start to learn its key and num_boxes
GEOMETRY_TOLERANCE = 0.01    # predictions' rects vs the features' geometry, in image fractions
RAW_BYTES = 200              # of a rejected line kept for a person to read (lines are ~0.5 MB)


# ---- the files -------------------------------------------------------------------------------
def read_lineidx(path: Path, tsv: Path) -> np.ndarray:
    """The line offsets a lineidx file lists, checked against its TSV: starts at 0, strictly
    increasing, inside the file (that each one starts a line is checked by `read_heads`)."""
    size = tsv.stat().st_size
    offsets = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            text = raw.strip()
            if not text:
                continue
            try:
                offsets.append(int(text))
            except ValueError:
                raise InputError(f"{path}: line {n} is not a byte offset: {raw[:50]!r}") from None
    off = np.array(offsets, dtype=np.int64)
    problem = ("it lists no line" if not len(off) else
               f"its first offset is {off[0]}, not 0" if off[0] != 0 else
               "its offsets do not increase" if np.any(np.diff(off) <= 0) else
               f"offset {off[-1]} is past the end of {tsv.name} ({size} bytes)"
               if off[-1] >= size else None)
    if problem:
        raise InputError(f"{path} does not index {tsv}: {problem}")
    return off


def scan_line_offsets(tsv: Path) -> np.ndarray:
    """Line offsets found by reading the whole file (when no lineidx comes with it)."""
    starts, pos = [0], 0
    with open(tsv, "rb") as f:
        while block := f.read(1 << 24):
            starts.extend((pos + np.flatnonzero(np.frombuffer(block, np.uint8) == 10) + 1).tolist())
            pos += len(block)
    return np.array([s for s in starts if s < pos], dtype=np.int64)


def read_heads(tsv: Path, offsets: np.ndarray, lineidx: Path | None) -> list[tuple[str, int] | None]:
    """(image id, num_boxes) at the start of each line, or None where the line does not start
    like `<key>\\t<int>\\t`. One seek and a small read per line: this is what lets a rerun skip
    done images without decoding their features. Raises InputError if an offset does not follow
    a newline (a lineidx of another file, or a stale one)."""
    heads = []
    with open(tsv, "rb") as f:
        for n, off in enumerate(offsets.tolist(), 1):
            f.seek(max(off - 1, 0))
            chunk = f.read(HEAD_BYTES + (off > 0))
            if off > 0:
                if chunk[:1] != b"\n":
                    raise InputError(f"{lineidx}: entry {n} (offset {off}) does not point at the "
                                     f"start of a line of {tsv}; the lineidx belongs to another "
                                     "version of the file")
                chunk = chunk[1:]
            parts = chunk.split(b"\n", 1)[0].split(b"\t", 2)
            try:
                key, num_boxes = parts[0].decode("utf-8").strip(), int(parts[1])
                heads.append((image_id_for(key), num_boxes) if key and len(parts) == 3 else None)
            except (UnicodeDecodeError, ValueError, IndexError):
                heads.append(None)
    return heads


class BadLine(ValueError):
    """A features.tsv line that cannot be imported; the message is the reject reason."""


def parse_line(line: bytes) -> tuple[str, np.ndarray]:
    """One features.tsv line -> (image key, float32 [num_boxes, 2054])."""
    fields = line.rstrip(b"\r\n").split(b"\t")
    if len(fields) != 3:
        raise BadLine(f"malformed row: expected <image key>\\t<num_boxes>\\t<base64 features>, "
                      f"got {len(fields)} fields")
    try:
        key = fields[0].decode("utf-8").strip()
        num_boxes = int(fields[1])
    except UnicodeDecodeError:
        raise BadLine("image key is not UTF-8") from None
    except ValueError:
        raise BadLine(f"num_boxes is not an integer: {fields[1][:20]!r}") from None
    if not key:
        raise BadLine("empty image key")
    if num_boxes < 1:
        raise BadLine(f"num_boxes is {num_boxes}: an image needs at least one box")
    try:
        data = base64.b64decode(fields[2], validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadLine(f"features are not valid base64: {e}") from None
    if len(data) != num_boxes * WIDTH * 4:
        raise BadLine(f"num_boxes x {WIDTH} float32 does not match the data: {num_boxes} boxes "
                      f"need {num_boxes * WIDTH * 4} bytes, decoded {len(data)}")
    boxes = np.frombuffer(data, dtype="<f4").reshape(num_boxes, WIDTH)
    if not np.isfinite(boxes).all():
        raise BadLine("features hold non-finite values")
    return key, boxes


class Predictions:
    """predictions.tsv, indexed by image id (byte offset of each row), read row by row on demand
    so a large file never sits in memory."""

    def __init__(self, path: Path):
        self.path = require_file(Path(path))
        self.offsets: dict[str, int] = {}
        pos = 0
        with open(self.path, "rb") as f:
            for line in f:
                key = line.split(b"\t", 1)[0].decode("utf-8", "replace").strip()
                if key:
                    self.offsets.setdefault(image_id_for(key), pos)
                pos += len(line)
        if not self.offsets:
            raise InputError(f"input file {self.path} has no row "
                             "(expected '<image key>\\t<json>' per line)")

    def boxes(self, image_id: str, width: int, height: int, geometry: np.ndarray
              ) -> tuple[list[str], list, list, np.ndarray]:
        """(region ids, labels, scores, rects [n, 4]) of an image's objects, which must be the
        features' boxes in the same order (checked against their geometry)."""
        if image_id not in self.offsets:
            raise BadLine(f"no row for this image in {self.path.name}")
        with open(self.path, "rb") as f:
            f.seek(self.offsets[image_id])
            line = f.readline()
        try:
            objects = json.loads(line.split(b"\t", 1)[1])["objects"]
            rects = np.array([o["rect"] for o in objects], dtype=np.float64).reshape(-1, 4)
        except (IndexError, KeyError, TypeError, ValueError) as e:
            raise BadLine(f"its {self.path.name} row is unreadable: {type(e).__name__}: {e}"
                          [:300]) from None
        if len(objects) != len(geometry):
            raise BadLine(f"{self.path.name} lists {len(objects)} boxes for this image, "
                          f"features.tsv has {len(geometry)}")
        scale = np.array([width, height, width, height], dtype=np.float64)
        off = float(np.max(np.abs(rects / scale - geometry[:, :4]))) if len(rects) else 0.0
        if not off <= GEOMETRY_TOLERANCE:
            raise BadLine(f"{self.path.name} boxes do not match the features' geometry (off by "
                          f"{off:.3f} of the image size): different image order or sizes")
        ids, labels, scores = [], [], []
        for o in objects:
            # the ingest reader's id, from the rect and class exactly as parsed
            ids.append("vinvl:r:" + stable_id(image_id, o.get("rect"), o.get("class")))
            label = o.get("class")
            labels.append(label.strip().lower() if isinstance(label, str) else None)
            conf = o.get("conf")
            scores.append(float(conf) if isinstance(conf, (int, float)) else None)
        return ids, labels, scores, rects.astype(np.float32)


# ---- one shard's rows ------------------------------------------------------------------------
@dataclass
class _Image:
    image_id: str
    region_ids: list[str]
    labels: list
    scores: list
    boxes: np.ndarray        # [n, 4] float32 pixels
    geometry: np.ndarray     # [n, 6] float32
    vectors: np.ndarray      # [n, 2048] in the stored dtype
    mean: np.ndarray         # [2048] float32: the stand-in image vector


@dataclass
class _Shard:
    spec: FeatureSetSpec
    build_id: str
    source: str
    images: list[_Image] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)

    def reject(self, line: int, reason: str, raw: bytes) -> None:
        ref = f"line {line}"
        self.rejects.append({
            "id": stable_id(DATASET, self.source, ref, reason, self.spec.id),
            "dataset": DATASET, "source_file": self.source, "record_ref": ref, "reason": reason,
            "raw": raw[:RAW_BYTES].decode("utf-8", "backslashreplace"), "ingest_id": self.build_id})

    def tables(self, drop_images: set[str], drop_rejects: set[str]) -> dict[str, pa.Table]:
        images = [im for im in self.images if im.image_id not in drop_images]
        rejects = [r for r in self.rejects if r["id"] not in drop_rejects]
        fs, build, dtype = self.spec.id, self.build_id, self.spec.dtype
        n = sum(len(im.region_ids) for im in images)
        cat = lambda name, width: (np.concatenate([getattr(im, name) for im in images])  # noqa: E731
                                   if images else np.zeros((0, width), np.float32))
        boxes, geometry = cat("boxes", 4), cat("geometry", 6)
        regions = pa.table({
            "feature_set": [fs] * n,
            "image_id": [im.image_id for im in images for _ in im.region_ids],
            "region_id": [r for im in images for r in im.region_ids],
            "box_source": ["imported"] * n,
            "label": pa.array([x for im in images for x in im.labels], pa.string()),
            "score": pa.array([x for im in images for x in im.scores], pa.float32()),
            **{c: boxes[:, k] for k, c in enumerate(("x1", "y1", "x2", "y2"))},
            "geometry": pa.FixedSizeListArray.from_arrays(pa.array(geometry.reshape(-1)), 6),
            "vector": vectors.encode(cat("vectors", DIM), dtype),
            "build_id": [build] * n}, schema=REGION_FEATURES)
        # VinVL has no global vector: the mean of the regions stands in (see import_vinvl_features)
        means = np.stack([im.mean for im in images]) \
            if images else np.zeros((0, DIM), np.float32)
        image_table = pa.table({"feature_set": [fs] * len(images),
                                "image_id": [im.image_id for im in images],
                                "vector": vectors.encode(means, dtype),
                                "build_id": [build] * len(images)}, schema=IMAGE_FEATURES)
        return {"region_features": regions, "image_features": image_table,
                "rejects": pa.Table.from_pylist(rejects, schema=REJECTS)}


def _read_line(f, offsets: np.ndarray, i: int, size: int, tsv: Path) -> bytes:
    stop = int(offsets[i + 1]) if i + 1 < len(offsets) else size
    f.seek(int(offsets[i]))
    line = f.read(stop - int(offsets[i]))
    # one line ends exactly at the next offset (the file's last line may lack its newline); a
    # lineidx that skips a line leaves two lines between consecutive offsets
    newline = line.find(b"\n")
    if not (newline == len(line) - 1 or (newline == -1 and stop == size)):
        raise InputError(f"the lineidx of {tsv} skips a line after entry {i + 1}: the bytes "
                         f"between offsets {offsets[i]} and {stop} hold more than one line")
    return line


def _import_line(shard: _Shard, line_no: int, line: bytes, sizes: dict,
                 predictions: Predictions | None) -> None:
    try:
        key, boxes = parse_line(line)
        image_id = image_id_for(key)
        if image_id not in sizes:
            raise BadLine(f"refers to an unknown image: {image_id} is not in the warehouse")
        width, height = sizes[image_id]
        geometry, feats = boxes[:, DIM:], boxes[:, :DIM]
        stored = feats.astype(vectors.DTYPES[shard.spec.dtype])
        if not np.isfinite(stored).all():
            raise BadLine(f"feature values up to {np.abs(feats).max():.3g} overflow "
                          f"{shard.spec.dtype}; import with dtype='float32'")
        if predictions is not None:
            ids, labels, scores, rects = predictions.boxes(image_id, width, height, geometry)
        else:
            ids = [f"{image_id}#vinvl{k}" for k in range(len(boxes))]
            labels, scores = [None] * len(ids), [None] * len(ids)
            rects = (geometry[:, :4] * np.array([width, height, width, height], np.float32))
    except BadLine as e:
        shard.reject(line_no, str(e), line)
        return
    shard.images.append(_Image(image_id, ids, labels, scores, rects.astype(np.float32),
                               np.ascontiguousarray(geometry, np.float32), stored,
                               feats.mean(axis=0, dtype=np.float32)))


# ---- the import ------------------------------------------------------------------------------
def _done(wh: Warehouse, snapshot: Snapshot, spec: FeatureSetSpec, source: str
          ) -> tuple[set[str], set[str], set[str]]:
    """(images in the feature set, line refs this feature set rejected, reject ids recorded)."""
    with connect(wh, snapshot) as con:
        images = {r[0] for r in con.execute(
            "SELECT DISTINCT image_id FROM image_features WHERE feature_set = ?",
            [spec.id]).fetchall()}
        rejected = con.execute(
            "SELECT id, record_ref FROM rejects WHERE dataset = ? AND source_file = ? AND "
            "ingest_id LIKE ?", [DATASET, source, f"{BUILD_KIND}-{spec.id}-%"]).fetchall()
    return images, {r[1] for r in rejected}, {r[0] for r in rejected}


def _image_sizes(wh: Warehouse, image_ids: list[str]) -> dict[str, tuple[int, int]]:
    with connect(wh) as con:
        con.register("_ids", pa.table({"id": pa.array(sorted(set(image_ids)), pa.string())}))
        rows = con.execute("SELECT id, width, height FROM images WHERE id IN "
                           "(SELECT id FROM _ids)").fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def _publish(wh: Warehouse, shard: _Shard, build: dict) -> dict:
    """Commit the shard; rows another run published meanwhile (checked under the writer lock)
    are dropped, so no image or reject is ever recorded twice. Returns the published counts."""

    # keys name the table too: an image id and a reject id could be the same string
    def published(snapshot: Snapshot) -> set[tuple[str, str]]:
        images, _, reject_ids = _done(wh, snapshot, shard.spec, shard.source)
        return ({("image", im.image_id) for im in shard.images if im.image_id in images}
                | {("reject", r["id"]) for r in shard.rejects if r["id"] in reject_ids})

    def rows_without(drop: frozenset) -> dict[str, pa.Table] | None:
        tables = shard.tables({key for kind, key in drop if kind == "image"},
                              {key for kind, key in drop if kind == "reject"})
        counts = {"images": tables["image_features"].num_rows,
                  "regions": tables["region_features"].num_rows,
                  "rejected": tables["rejects"].num_rows, "reasons": {}}
        for reason in tables["rejects"].column("reason").to_pylist():
            kind = reason.split(":")[0]  # the reason without its particulars
            counts["reasons"][kind] = counts["reasons"].get(kind, 0) + 1
        build["counts"] = counts
        if not tables["image_features"].num_rows and not tables["rejects"].num_rows:
            return None
        return tables

    publish_new_rows(wh, shard.build_id, rows_without, build, published)
    return build["counts"]


def import_vinvl_features(warehouse: str | Warehouse, features_tsv: str | Path,
                          lineidx: str | Path | None = None, dtype: str = "float16",
                          predictions_tsv: str | Path | None = None,
                          shard_lines: int = 256) -> dict:
    """Import a VinVL features.tsv into its feature set, publishing one snapshot per
    `shard_lines` lines. `lineidx` (the byte offset of each line, one integer per line) defaults to
    the TSV's sibling `<stem>.lineidx`; without one the offsets are found by reading the file.
    Returns counts: lines = imported images + rejected + already_done (done by earlier runs).

    Image ids as the `vinvl-predictions` reader maps keys; a line whose image is not in the
    warehouse is rejected, as ingest rejects any row naming an unknown image. With `predictions`
    (whose k-th object is the k-th box of the image's features), region ids and boxes are the
    reader's ("vinvl:r:" + hash(image id, rect, class); the rect), so the vectors join the `regions`
    rows, and labels and scores come along; without, regions are "<image id>#vinvl<k>" boxed by the
    geometry times the image's warehouse size. VinVL has no global image vector: the mean of the
    image's region vectors stands in as image_features (what Oscar-style models pool anyway); it is
    NOT a backbone output.

    The feature set: kind "imported", backbone "vinvl", weights_sha256 = sha256 of features.tsv (the
    file is the model's output, so its content pins the vectors), dim 2048, box_source "imported" or
    "imported+predictions:<sha256 prefix>", max_regions = the most boxes of any line, grid 0. An
    import killed midway resumes; a rerun finds every line done (its image in the feature set, or
    its reject recorded) and writes nothing.
    """
    started = time.time()
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    if dtype not in vectors.DTYPES:
        raise ValueError(f"dtype must be one of {sorted(vectors.DTYPES)}, got {dtype!r}")
    if not wh.exists():
        raise FileNotFoundError(f"no warehouse at {wh.root}: ingest the images first")
    tsv = require_file(Path(features_tsv))
    index = Path(lineidx) if lineidx is not None else tsv.with_suffix(".lineidx")
    if lineidx is not None:
        require_file(index)
    offsets = read_lineidx(index, tsv) if index.is_file() else scan_line_offsets(tsv)
    heads = read_heads(tsv, offsets, index if index.is_file() else None)
    predictions = Predictions(Path(predictions_tsv)) if predictions_tsv is not None else None

    tsv_sha = file_sha256(tsv)
    inputs = {"features_tsv": {"path": str(tsv.resolve()), "sha256": tsv_sha},
              "lineidx": str(index.resolve()) if index.is_file() else "computed"}
    box_source = "imported"
    if predictions is not None:
        pred_sha = file_sha256(predictions.path)
        inputs["predictions_tsv"] = {"path": str(predictions.path.resolve()), "sha256": pred_sha}
        box_source = f"imported+predictions:{pred_sha[:16]}"
    # the most boxes of a line, counting no more than its bytes can hold (a corrupt num_boxes
    # must not define the feature set)
    line_bytes = np.diff(np.append(offsets, tsv.stat().st_size))
    max_regions = max((min(h[1], int(n) * 3 // 4 // (WIDTH * 4))
                       for h, n in zip(heads, line_bytes) if h), default=0)
    spec = FeatureSetSpec(
        kind="imported", backbone="vinvl", pretrained="vinvl", weights_sha256=tsv_sha,
        box_source=box_source, image_size=None, dim=DIM, dtype=dtype,
        max_regions=max(max_regions, 0), grid=0,
        code_version=IMPORT_CODE_VERSION).with_created()
    register_feature_set(wh, spec)  # also clears leftovers of killed builds

    # a line is done when its image is in the feature set or this feature set rejected it;
    # an image's first line is the one imported, later lines with the same image are rejected
    done_images, rejected_refs, _ = _done(wh, wh.current(), spec, tsv.name)
    first: dict[str, int] = {}
    for i, head in enumerate(heads):
        if head:
            first.setdefault(head[0], i)
    pending = [i for i, head in enumerate(heads)
               if f"line {i + 1}" not in rejected_refs
               and not (head and first[head[0]] == i and head[0] in done_images)]

    report = {"feature_set": spec.id, "dim": DIM, "dtype": dtype, "lines": len(heads),
              "already_done": len(heads) - len(pending), "images": 0, "regions": 0,
              "rejected": 0, "reasons": {}, "shards": 0}
    size = tsv.stat().st_size
    with open(tsv, "rb") as f:
        for start in range(0, len(pending), shard_lines):
            todo = pending[start:start + shard_lines]
            build_id = f"{BUILD_KIND}-{spec.id}-{uuid.uuid4().hex[:12]}"
            shard = _Shard(spec, build_id, tsv.name)
            sizes = _image_sizes(wh, [heads[i][0] for i in todo if heads[i]])
            for i in todo:
                line = _read_line(f, offsets, i, size, tsv)
                if heads[i] and first[heads[i][0]] != i:
                    shard.reject(i + 1, f"duplicate image: {heads[i][0]} already on line "
                                        f"{first[heads[i][0]] + 1}", line)
                    continue
                _import_line(shard, i + 1, line, sizes, predictions)
            build = new_build(BUILD_KIND, build_id=build_id,
                              params={"feature_set": spec.id, "dtype": dtype,
                                      "shard_lines": shard_lines,
                                      "lines": [todo[0] + 1, todo[-1] + 1]},
                              inputs=inputs, counts={})
            counts = _publish(wh, shard, build)
            report["shards"] += 1
            for k in ("images", "regions", "rejected"):
                report[k] += counts[k]
            for reason, n in counts["reasons"].items():
                report["reasons"][reason] = report["reasons"].get(reason, 0) + n
    report["seconds"] = round(time.time() - started, 3)
    return report
