"""Zero-shot tagging of regions against the concept vocabulary with the OpenCLIP text tower of the
feature set's own weights: score = cos(region vector, prompt embedding), where concept
("circle", "red") is prompted as "a photo of a red circle."."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from features.backbone import TextTower, load_text_tower
from features.feature_sets import FeatureSetMismatch, FeatureSetSpec, require_feature_set
from features.load import load_region_features
from features.vocabulary import latest_vocab
from warehouse.catalog import connect
from warehouse.publish import AlreadyPublished, new_build, publish_tables
from warehouse.schemas import IMAGE_CONCEPTS, REGION_TAGS
from warehouse.store import Snapshot, Warehouse

# Bump when the tags this code writes for the same inputs and parameters would change.
ZERO_SHOT_CODE_VERSION = "1"
SOURCE = "zero-shot"
KIND = "zero-shot-tags"          # manifest kind of a tagging build
TAGGABLE_KINDS = ("object", "attribute")
CHUNK_REGIONS = 200_000          # regions loaded and published per chunk (bounded memory)
MAX_SCORES = 1 << 25             # elements of one [regions x concepts] score block (128 MB)
TEXT_BATCH = 1024                # prompts per text-tower forward pass


def prompt_text(kind: str, concept: list[str]) -> str:
    """The words a concept is written with in a prompt: "circle", "red circle"."""
    if kind == "object":
        return concept[0]
    if kind == "attribute":
        obj, attribute = concept
        return f"{attribute} {obj}"
    raise ValueError(f"concepts of kind {kind!r} cannot be tagged on one region")


def tagging_id(spec: FeatureSetSpec, vocab: str, top_k: int, threshold: float, prompt: str,
               kinds: tuple[str, ...]) -> str:
    record = {"feature_set": spec.id, "vocab": vocab, "weights_sha256": spec.weights_sha256,
              "top_k": top_k, "threshold": float(threshold), "prompt": prompt,
              "kinds": list(kinds), "code_version": ZERO_SHOT_CODE_VERSION}
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ---- checks ------------------------------------------------------------------------------------
def _check_params(top_k: int, threshold: float, prompt: str, kinds: tuple[str, ...],
                  batch_size: int) -> None:
    if top_k < 1 or batch_size < 1:
        raise ValueError(f"top_k and batch_size must be >= 1, got {top_k}, {batch_size}")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine, in [-1, 1]; got {threshold}")
    if prompt.count("{}") != 1:
        raise ValueError(f"prompt must contain one '{{}}' for the concept, got {prompt!r}")
    if not kinds or set(kinds) - set(TAGGABLE_KINDS):
        raise ValueError(f"kinds must be among {TAGGABLE_KINDS} (relations need two regions), "
                         f"got {kinds}")


def _check_feature_set(spec: FeatureSetSpec, allow_random_weights: bool) -> None:
    if spec.kind != "extracted":
        raise ValueError(f"feature set {spec.id} is {spec.kind} ({spec.backbone}): its vectors "
                         "are not in an OpenCLIP image-text space, no text tower can score them")
    if spec.pretrained == "none" and not allow_random_weights:
        raise ValueError(f"feature set {spec.id} ({spec.backbone}) has random-init weights: "
                         "zero-shot tags from them would be noise. Extract features with "
                         "pretrained weights (an OpenCLIP tag or a checkpoint file) to tag "
                         "(allow_random_weights=True exists for tests)")


def _weights_source(spec: FeatureSetSpec, pretrained_path: str | None) -> str | None:
    """What load_text_tower loads: the given checkpoint, else what the feature set records."""
    if pretrained_path is not None:
        path = Path(pretrained_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint file at {pretrained_path}")
        return str(path.resolve())
    if spec.pretrained == "none":
        return None
    if spec.pretrained_source:
        return spec.pretrained_source
    import open_clip
    if spec.backbone.startswith(("hf-hub:", "local-dir:")) or \
            spec.pretrained in open_clip.list_pretrained_tags_by_model(spec.backbone):
        return spec.pretrained
    raise ValueError(f"feature set {spec.id} was extracted with the local checkpoint "
                     f"{spec.pretrained!r}; the warehouse records only its name and hash: pass "
                     "pretrained_path=<that file>")


def _text_tower(spec: FeatureSetSpec, pretrained_path: str | None,
                device: str | torch.device | None) -> TextTower:
    tower = load_text_tower(spec.backbone, _weights_source(spec, pretrained_path),
                            spec.image_size, device)
    if tower.weights_sha256 != spec.weights_sha256:
        raise FeatureSetMismatch(
            f"feature set {spec.id} was extracted with weights {spec.weights_sha256[:12]} "
            f"({spec.pretrained}); the text tower loaded from {tower.pretrained!r} has "
            f"{tower.weights_sha256[:12]}. Region vectors and prompt embeddings must come from "
            "the same weights")
    return tower


# ---- inputs ------------------------------------------------------------------------------------
def _concepts(con, vocab: str, kinds: tuple[str, ...]) -> pa.Table:
    n = con.execute("SELECT count(*) FROM concepts WHERE vocab = ?", [vocab]).fetchall()[0][0]
    if not n:
        raise LookupError(f"no concept vocabulary {vocab!r} in the warehouse")
    return con.sql("SELECT id, kind, tuple FROM concepts WHERE vocab = ? AND list_contains(?, "
                   "kind) ORDER BY id", params=[vocab, list(kinds)]).to_arrow_table()


def _covered(snapshot: Snapshot, tagging: str) -> set[str]:
    """Extraction builds whose regions this tagging has published."""
    return {b for m in snapshot.builds if m.get("kind") == KIND and m.get("tagging") == tagging
            for b in m["inputs"]["feature_builds"]}


def _pending_chunks(con, spec: FeatureSetSpec, covered: set[str]) -> list[tuple[list, list]]:
    """(extraction build ids, their image ids) in chunks of about CHUNK_REGIONS regions. An
    image's regions all come from one build (extraction never doubles an image)."""
    rows = con.execute("""SELECT build_id, image_id, count(*) FROM region_features
                          WHERE feature_set = ? GROUP BY ALL ORDER BY build_id, image_id""",
                       [spec.id]).fetchall()
    per_build: dict[str, tuple[list, int]] = {}
    for build, image, n in rows:
        if build not in covered:
            images, total = per_build.get(build, ([], 0))
            images.append(image)
            per_build[build] = (images, total + n)
    chunks, builds, images, size = [], [], [], 0
    for build, (ids, n) in per_build.items():
        builds.append(build)
        images += ids
        size += n
        if size >= CHUNK_REGIONS:
            chunks.append((builds, images))
            builds, images, size = [], [], 0
    if builds:
        chunks.append((builds, images))
    return chunks


# ---- scoring -----------------------------------------------------------------------------------
def encode_concepts(tower: TextTower, concepts: pa.Table, prompt: str) -> torch.Tensor:
    """Normalised prompt embeddings [n concepts, dim], in the concepts' row order."""
    texts = [prompt.replace("{}", prompt_text(k, t)) for k, t in
             zip(concepts["kind"].to_pylist(), concepts["tuple"].to_pylist())]
    return torch.cat([tower.encode(texts[i:i + TEXT_BATCH])
                      for i in range(0, len(texts), TEXT_BATCH)])


def top_tags(regions: torch.Tensor, prompts: torch.Tensor, kind_of: np.ndarray, top_k: int,
             threshold: float, batch_size: int) -> tuple[np.ndarray, ...]:
    """For region vectors [n, dim] and normalised prompt embeddings [c, dim] whose kinds are
    `kind_of` [c]: (region index, prompt index, cosine, rank) of each region's top_k prompts of
    every kind with cosine >= threshold, ordered by region, kind, rank."""
    device = prompts.device
    columns = [torch.from_numpy(np.flatnonzero(kind_of == k)).to(device)
               for k in dict.fromkeys(kind_of)]
    # regions per block: the score matrix stays under MAX_SCORES elements on large vocabularies
    rows = max(1, min(batch_size, MAX_SCORES // max(1, len(kind_of))))
    out: list[list[np.ndarray]] = [[], [], [], []]
    for start in range(0, len(regions), rows):
        block = torch.nn.functional.normalize(regions[start:start + rows].to(device).float(),
                                              dim=-1)
        scores = block @ prompts.T
        picked = []
        for cols in columns:
            values, idx = scores[:, cols].topk(min(top_k, len(cols)), dim=1)
            picked.append((values, cols[idx]))
        values = torch.cat([v for v, _ in picked], 1)            # [b, sum of k per kind]
        concept = torch.cat([c for _, c in picked], 1)
        rank = torch.cat([torch.arange(1, v.shape[1] + 1, device=device).expand_as(v)
                          for v, _ in picked], 1)
        r, j = torch.nonzero(values >= threshold, as_tuple=True)  # row-major: region, kind, rank
        for acc, col in zip(out, (r + start, concept[r, j], values[r, j], rank[r, j])):
            acc.append(col.cpu().numpy())
    if not out[0]:
        return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
                np.zeros(0, np.int64))
    return tuple(np.concatenate(acc) for acc in out)


def _tag_chunk(wh: Warehouse, spec: FeatureSetSpec, tagging: str, vocab: str,
               image_ids: list[str], concept_ids: np.ndarray, kind_of: np.ndarray,
               prompts: torch.Tensor, top_k: int, threshold: float, batch_size: int
               ) -> tuple[pa.Table, pa.Table, int, int]:
    regions = load_region_features(wh, spec.id, image_ids)
    r, c, score, rank = top_tags(regions.vectors, prompts, kind_of, top_k, threshold,
                                 batch_size)
    n = len(r)
    tags = pa.table({
        "tagging": pa.array([tagging] * n, pa.string()), "vocab": pa.array([vocab] * n),
        "feature_set": pa.array([spec.id] * n), "image_id": pa.array(regions.image_id[r]),
        "region_id": pa.array(regions.region_id[r]), "concept_id": concept_ids[c],
        "score": score.astype(np.float32), "rank": rank.astype(np.int32)}).cast(REGION_TAGS)
    per_image = tags.group_by(["image_id", "concept_id"]).aggregate([("score", "max")])
    m = per_image.num_rows
    image_concepts = pa.table({
        "vocab": pa.array([vocab] * m, pa.string()), "image_id": per_image["image_id"],
        "concept_id": per_image["concept_id"], "source": pa.array([SOURCE] * m, pa.string()),
        "score": per_image["score_max"]}).cast(IMAGE_CONCEPTS)
    image_concepts = image_concepts.take(pc.sort_indices(
        image_concepts, [("image_id", "ascending"), ("concept_id", "ascending")]))
    return tags, image_concepts, len(regions), len(regions.image_ids)


# ---- the build ---------------------------------------------------------------------------------
def tag_regions(warehouse: str | Warehouse, feature_set_id: str, vocab: str | None = None,
                top_k: int = 3, threshold: float = 0.25, pretrained_path: str | None = None,
                allow_random_weights: bool = False, prompt: str = "a photo of a {}.",
                batch_size: int = 4096, kinds: tuple[str, ...] = ("object",),
                device: str | torch.device | None = None) -> dict:
    """Tag the feature set's regions with concepts of `vocab` (default: the latest vocabulary)
    and publish region_tags and zero-shot image_concepts rows. Returns a report: tagging id,
    regions, images, region_tags, image_concepts, chunks, skipped (nothing new to tag),
    seconds.

    Per region and concept kind, the top_k concepts with score >= threshold become tags. Scores are
    raw cosines, not a softmax over the vocabulary, so a threshold means the same whatever the
    vocabulary's size. Relation concepts are not tagged: they describe a pair of regions, and one
    region vector says nothing about the other. image_concepts rows have source "zero-shot" and
    score = max over the image's regions; each tagging (other thresholds, feature sets) adds its
    own, named by region_tags.tagging.

    Refused: random-init weights (their tags are noise; tests pass allow_random_weights), imported
    feature sets (VinVL vectors are not in a CLIP space), and text weights other than the feature
    set's. The warehouse records only a local checkpoint's file name and hash, so its path is passed
    again as pretrained_path.

    Each run tags the extraction builds of the feature set this tagging has not covered yet, one
    snapshot per chunk of builds: a rerun with nothing new is skipped, a feature set extended later
    gets only its new images tagged, an interrupted run resumes.
    """
    started = time.perf_counter()
    kinds = tuple(kinds)
    _check_params(top_k, threshold, prompt, kinds, batch_size)
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    with wh.lock():
        wh.remove_orphans()
    spec = require_feature_set(wh, feature_set_id)
    _check_feature_set(spec, allow_random_weights)
    vocab = vocab or latest_vocab(wh)
    if vocab is None:
        raise LookupError(f"no concept vocabulary in {wh.root}: build one first "
                          "(features.vocabulary.build_vocabulary)")
    tagging = tagging_id(spec, vocab, top_k, threshold, prompt, kinds)
    params = {"feature_set": spec.id, "vocab": vocab, "top_k": top_k,
              "threshold": float(threshold), "prompt": prompt, "kinds": list(kinds),
              "backbone": spec.backbone, "pretrained": spec.pretrained,
              "weights_sha256": spec.weights_sha256}
    report = {"tagging": tagging, "feature_set": spec.id, "vocab": vocab, "regions": 0,
              "images": 0, "region_tags": 0, "image_concepts": 0, "chunks": 0}

    snap = wh.current()
    with connect(wh, snap) as con:
        concepts = _concepts(con, vocab, kinds)
        chunks = _pending_chunks(con, spec, _covered(snap, tagging))
    if not chunks:  # checked before loading any weights: a rerun costs one query
        return {**report, "skipped": True, "seconds": round(time.perf_counter() - started, 3)}
    if not concepts.num_rows:
        raise ValueError(f"vocabulary {vocab} has no concepts of kinds {list(kinds)}")

    tower = _text_tower(spec, pretrained_path, device)
    prompts = encode_concepts(tower, concepts, prompt)
    concept_ids = concepts["id"].to_numpy()
    kind_of = np.array(concepts["kind"].to_pylist())
    for builds, image_ids in chunks:
        tags, image_concepts, n_regions, n_images = _tag_chunk(
            wh, spec, tagging, vocab, image_ids, concept_ids, kind_of, prompts, top_k,
            threshold, batch_size)
        counts = {"regions": n_regions, "images": n_images, "region_tags": tags.num_rows,
                  "image_concepts": image_concepts.num_rows}
        if _publish(wh, tagging, params, builds, counts, tags, image_concepts):
            report["chunks"] += 1
            for key, value in counts.items():
                report[key] += value
    seconds = time.perf_counter() - started
    return {**report, "concepts": concepts.num_rows, "skipped": report["chunks"] == 0,
            "seconds": round(seconds, 3),
            "regions_per_s": round(report["regions"] / max(seconds, 1e-9), 1)}


def _publish(wh: Warehouse, tagging: str, params: dict, builds: list[str], counts: dict,
             tags: pa.Table, image_concepts: pa.Table) -> bool:
    """Commit one chunk; False when another run published this tagging of these builds first."""
    build_id = f"zero-shot-{tagging}-{time.time_ns():x}"
    build = new_build(KIND, build_id=build_id, tagging=tagging, params=params,
                      inputs={"feature_builds": builds}, counts=counts,
                      zero_shot_code_version=ZERO_SHOT_CODE_VERSION)

    def check(current: Snapshot) -> None:
        if _covered(current, tagging) & set(builds):
            raise AlreadyPublished()

    try:
        # a chunk without tags still publishes its manifest: its builds are covered
        publish_tables(wh, build_id, {"region_tags": tags, "image_concepts": image_concepts},
                       build, check=check)
    except AlreadyPublished:
        return False
    return True
