"""Feature sets: the record of everything that made a set of region vectors (one backbone, weights,
box policy, image size, extraction code version), and its id, a hash of that record: vectors made
differently never share an id, and a model trained on one feature set refuses another."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields, replace

import pyarrow as pa

from warehouse.catalog import connect
from warehouse.publish import AlreadyPublished, new_build, publish_tables, utc_timestamp
from warehouse.schemas import FEATURE_SETS
from warehouse.store import Warehouse

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
        return replace(self, created=utc_timestamp())


def list_feature_sets(warehouse: str | Warehouse) -> list[FeatureSetSpec]:
    with connect(warehouse) as con:
        t = con.sql(f"SELECT * FROM {TABLE} ORDER BY created, id").to_arrow_table()
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


def register_feature_set(warehouse: str | Warehouse, spec: FeatureSetSpec) -> bool:
    """Publish the feature set's row unless it is already registered (checked under the writer
    lock, so concurrent registrations add one row). Also clears the leftovers of builds killed
    earlier. Returns True when this call added the row."""
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    with wh.lock():
        wh.remove_orphans()
    build_id = f"feature-set-{spec.id}-{time.time_ns():x}"

    def check(snapshot) -> None:
        with connect(wh, snapshot) as con:
            n = con.execute(f"SELECT count(*) FROM {TABLE} WHERE id = ?",
                            [spec.id]).fetchall()[0][0]
        if n:
            raise AlreadyPublished()

    spec = spec if spec.created else spec.with_created()
    build = new_build("feature-set", build_id=build_id, params={"feature_set": spec.id},
                      inputs={}, counts={"new": 1}, feature_set=spec.row())
    try:
        publish_tables(wh, build_id, {TABLE: pa.Table.from_pylist([spec.row()],
                                                                  schema=FEATURE_SETS)},
                       build, check=check)
    except AlreadyPublished:
        return False
    return True
