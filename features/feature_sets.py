"""Feature sets: the record of everything that made a set of region vectors, and its id.

A feature set holds vectors from exactly one backbone, weights, box policy, image size and
extraction code version; its id is a hash of that record, so vectors made differently can never
share an id, and a model trained on one feature set refuses another (`check_compatible`)."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.catalog import connect
from warehouse.schemas import FEATURE_SETS
from warehouse.store import Warehouse
from warehouse.version import code_version

TABLE = "feature_sets"


class FeatureSetMismatch(ValueError):
    """Vectors from one feature set were offered where another (or other dimensions) is expected."""


@dataclass(frozen=True)
class FeatureSetSpec:
    kind: str                      # extracted | imported
    backbone: str                  # OpenCLIP model name, "efficientnet-lite0", or "vinvl"
    pretrained: str                # tag, checkpoint file name, or "none"
    weights_sha256: str
    box_source: str                # box policy, e.g. "regions|grid"
    image_size: int | None
    dim: int
    dtype: str                     # float16 | float32
    max_regions: int
    grid: int
    code_version: str
    created: str = ""              # not part of the id
    # Where to load the weights from in this process (a checkpoint's full path); not stored and
    # not part of the id, so the same weights found at another path are the same feature set.
    pretrained_source: str | None = field(default=None, compare=False, repr=False)

    @property
    def id(self) -> str:
        record = {k: v for k, v in asdict(self).items()
                  if k not in ("created", "pretrained_source")}
        canonical = json.dumps(record, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def row(self) -> dict:
        """The `feature_sets` row."""
        values = asdict(self)
        values["id"] = self.id
        return {f.name: values[f.name] for f in FEATURE_SETS}

    @classmethod
    def from_row(cls, row: dict) -> "FeatureSetSpec":
        names = {f.name for f in fields(cls)} - {"pretrained_source"}
        spec = cls(**{k: row[k] for k in names})
        if row.get("id") not in (None, spec.id):
            raise FeatureSetMismatch(f"feature set {row['id']}: its stored record hashes to "
                                     f"{spec.id}; the feature_sets row was altered")
        return spec

    def with_created(self) -> "FeatureSetSpec":
        return replace(self, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def write_part(table: pa.Table, path: str | Path) -> None:
    """One Parquet part file of a feature-store table. The vector column is stored plain and
    uncompressed: float bytes neither repeat nor compress much, and leaving both off keeps
    reading it a memcpy (warehouse/vectors.py); other columns get dictionaries and zstd."""
    names = table.schema.names
    pq.write_table(table, path, compression={n: ("none" if n == "vector" else "zstd")
                                             for n in names},
                   use_dictionary=[n for n in names if n != "vector"])


def list_feature_sets(warehouse: str | Warehouse) -> list[FeatureSetSpec]:
    con = connect(warehouse)
    try:
        t = con.sql(f"SELECT * FROM {TABLE} ORDER BY created, id").to_arrow_table()
    finally:
        con.close()
    seen: dict[str, FeatureSetSpec] = {}
    for row in t.to_pylist():  # a handful of rows; identical re-registrations collapse by id
        seen.setdefault(row["id"], FeatureSetSpec.from_row(row))
    return list(seen.values())


def require_feature_set(warehouse: str | Warehouse, feature_set_id: str) -> FeatureSetSpec:
    """The registered feature set with this id, or LookupError naming the ones that exist."""
    known = list_feature_sets(warehouse)
    for spec in known:
        if spec.id == feature_set_id:
            return spec
    listing = ", ".join(f"{s.id} ({s.backbone}, {s.dim}-d)" for s in known) or "none"
    root = warehouse.root if isinstance(warehouse, Warehouse) else warehouse
    raise LookupError(f"no feature set {feature_set_id!r} in warehouse {root}; registered: "
                      f"{listing}")


def check_compatible(spec: FeatureSetSpec, *, feature_set: str | None = None,
                     backbone: str | None = None, dim: int | None = None,
                     weights_sha256: str | None = None, dtype: str | None = None) -> None:
    """Raise FeatureSetMismatch unless `spec` is what a consumer (a model, a checkpoint)
    expects; each expectation left None is not checked."""
    expected = {"id": feature_set, "backbone": backbone, "dim": dim,
                "weights_sha256": weights_sha256, "dtype": dtype}
    actual = {"id": spec.id, "backbone": spec.backbone, "dim": spec.dim,
              "weights_sha256": spec.weights_sha256, "dtype": spec.dtype}
    wrong = [f"{k}: expected {v!r}, feature set has {actual[k]!r}"
             for k, v in expected.items() if v is not None and v != actual[k]]
    if wrong:
        raise FeatureSetMismatch(
            f"feature set {spec.id} ({spec.backbone}, pretrained {spec.pretrained}, {spec.dim}-d)"
            f" does not match what this model was built for: {'; '.join(wrong)}. Vectors from "
            "different backbones or weights never mix: train on the feature set the model "
            "expects, or start a new model for this one.")


class _AlreadyRegistered(Exception):
    pass


def register_feature_set(warehouse: str | Warehouse, spec: FeatureSetSpec) -> bool:
    """Publish the feature set's row unless it is already registered (checked under the writer
    lock, so concurrent registrations add one row). Also clears the leftovers of builds killed
    earlier. Returns True when this call added the row."""
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    with wh.lock():
        wh.remove_orphans()
    build_id = f"feature-set-{spec.id}-{time.time_ns():x}"

    def check(snapshot) -> None:
        con = connect(wh, snapshot)
        try:
            n = con.execute(f"SELECT count(*) FROM {TABLE} WHERE id = ?",
                            [spec.id]).fetchall()[0][0]
        finally:
            con.close()
        if n:
            raise _AlreadyRegistered
        build["snapshot"] = snapshot.version + 1

    spec = spec if spec.created else spec.with_created()
    build = {"kind": "feature-set", "build_id": build_id, "params": {"feature_set": spec.id},
             "inputs": {}, "counts": {"new": 1}, "feature_set": spec.row(),
             "code_version": code_version(),
             "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with wh.staging(build_id) as folder:
        path = folder / f"{build_id}.parquet"
        write_part(pa.Table.from_pylist([spec.row()], schema=FEATURE_SETS), path)
        try:
            wh.publish({TABLE: [path]}, build, check=check)
        except _AlreadyRegistered:
            return False
    return True
