"""The MVP model as an MLflow pyfunc that serves real requests: an image (and optionally a caption,
a question, a hypothesis, a referring expression, region labels, boxes) in; embeddings, match
scores and, where the package holds the task heads, an answer, an entailment label and a box out.

    info = log_pyfunc("runs/pretrain/stage2/last.pt", "runs/demo/warehouse")   # inside a run
    mlflow.pyfunc.load_model(info.model_uri).predict(pd.DataFrame({"image_path": ["cat.png"]}))
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from features.backbone import EFFICIENTNETS, efficientnet_weights_file
from features.extract import backbone_for_feature_set, encode_image
from features.feature_sets import FeatureSetSpec, require_feature_set
from model.batch import VisualInputs, pad_rows
from model.config import ModelConfig
from model.downstream.tasks import TASKS
from model.mvp import MVP
from model.serving import heads
from model.serving.gallery import Gallery, build_gallery
from model.text import readable, tag_sequence, text_batch
from model.training import concepts
from model.training.checkpoint import load_checkpoint, load_weights, save_weights_only
from warehouse.hashing import file_sha256
from warehouse.store import Warehouse

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
import mlflow  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.models import ModelSignature  # noqa: E402
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR  # noqa: E402
from mlflow.types.schema import Array, ColSpec, Schema  # noqa: E402

# The request: every column optional, but each row needs `image` or `image_path`, except a row
# with `text` alone to a package with a gallery (log_pyfunc gallery_split), which searches it.
# MLflow's JSON reader (scoring server, `mlflow models predict`) takes no null in a binary or
# array column: a JSON request gives `image`, `boxes`, `tags` in every row or in none, and box
# coordinates as JSON floats (10.0: it refuses to cast integers to double).
INPUT_SCHEMA = Schema([
    ColSpec("binary", "image", required=False),       # the image file (PNG, JPEG...; base64 in JSON)
    ColSpec("string", "image_path", required=False),  # a regular file under $MVP_SERVING_IMAGE_ROOT
    # regions [x1, y1, x2, y2] in image pixels, best first; none: the feature set's grid
    ColSpec(Array(Array("double")), "boxes", required=False),
    ColSpec(Array("string"), "tags", required=False),   # region labels; none: no tags
    ColSpec("string", "text", required=False),       # a caption to embed and match (cut to what the
    #                                                     model reads)
    ColSpec("string", "question", required=False),   # answered when the package has a VQA head
    ColSpec("string", "hypothesis", required=False),  # judged when it has an entailment head
    ColSpec("string", "expression", required=False),  # located when it has a referring head
])
OUTPUT_SCHEMA = Schema([   # one row per request row; a row with an `error` has only that
    ColSpec(Array("float"), "image_embedding", required=False),   # g_v, a unit vector
    ColSpec(Array("float"), "text_embedding", required=False),    # g_t (unit); null without text
    ColSpec("double", "cosine", required=False),                  # g_t . g_v (dual encoder)
    ColSpec("double", "match_score", required=False),             # ITM p(match) (cross encoder)
    # the caption's concepts the model read; null when the server lacks NLTK data
    ColSpec(Array("string"), "concepts", required=False),
    ColSpec("long", "n_regions", required=False),
    ColSpec("string", "box_source", required=False),   # "given" | "grid"
    ColSpec("string", "answer", required=False),       # null without a VQA head or question
    ColSpec("string", "entailment", required=False),   # entailment | neutral | contradiction
    # the probability of each of those three labels, in that order
    ColSpec(Array("double"), "entailment_probs", required=False),
    ColSpec(Array("double"), "box", required=False),   # [x1, y1, x2, y2] pixels of the region
    ColSpec("double", "box_score", required=False),    # the expression refers to (and its score)
    # with a gallery packaged: the text's nearest gallery images (ids) and cosines, best first
    ColSpec(Array("string"), "gallery_images", required=False),
    ColSpec(Array("double"), "gallery_scores", required=False),
    # null, or one line saying why this row has no answer ("row 2: text must be a string")
    ColSpec("string", "error", required=False),
])
SIGNATURE = ModelSignature(inputs=INPUT_SCHEMA, outputs=OUTPUT_SCHEMA)
CODE = Path(__file__).with_name("model_code.py")   # what a package runs: set_model(...)

IMAGE_ROOT_ENV = "MVP_SERVING_IMAGE_ROOT"   # image_path is read only under it; unset: none
TIME_BUDGET_ENV = "MVP_SERVING_TIME_BUDGET_S"
DEFAULT_TIME_BUDGET_S = 30.0        # rows not started by then get an error (MLflow gives up at 60)
BATCH_ROWS = 64                     # rows the model runs on at once
MAX_IMAGE_BYTES = 32 << 20          # an encoded image file
MAX_IMAGE_PIXELS = 36_000_000       # 6000 x 6000 decoded; PIL's own bomb limit is ~179M
NOT_ALLOWED = "image_path not allowed"   # one answer for every refusal: exists or not
log = logging.getLogger(__name__)


class RowError(Exception):
    """A request row the model cannot answer; its message becomes that row's `error`."""


class MVPServingModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        art = context.artifacts
        state = load_checkpoint(art["checkpoint"])
        self.cfg = ModelConfig(**state["model_config"])
        self.model = MVP(self.cfg)
        load_weights(self.model, state)
        self.model.eval()
        spec_row = json.loads(Path(art["feature_set"]).read_text())
        self.spec = FeatureSetSpec.from_row(spec_row)   # refuses an altered record
        # the feature set's own backbone, so request images get the vectors training saw; raises
        # FeatureSetMismatch unless the weights hash, width and size are the recorded ones
        self.backbone = backbone_for_feature_set(self.spec, art.get("backbone_weights"))
        self.vocabulary = concepts.ConceptVocabulary.read(art["vocabulary"])
        self.heads = {t.column: served for t in heads.HEADS
                      if (served := heads.load(t, art.get(heads.artifact(t)))) is not None}
        self.gallery = Gallery.open(art)
        root = os.environ.get(IMAGE_ROOT_ENV)
        self.image_root = Path(root).resolve() if root else None   # None: image bytes only
        self.time_budget = float(os.environ.get(TIME_BUDGET_ENV, DEFAULT_TIME_BUDGET_S))

    @torch.inference_mode()
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        rows = model_input.to_dict("records")
        deadline = time.monotonic() + self.time_budget
        parsed, errors = [], []
        for k, row in enumerate(rows):   # a bad row gets its error; the others are answered
            try:
                if time.monotonic() > deadline:
                    raise RowError("request time budget exceeded")
                parsed.append(self._row(row))
                errors.append(None)
            except RowError as e:
                parsed.append(None)
                errors.append(_one_line(f"row {k}: {e}"))
            except Exception as e:   # our bug, not the request's: the trace stays in the log
                log.exception("row %d of a request failed", k)
                parsed.append(None)
                errors.append(f"row {k}: internal error ({type(e).__name__})")
        n, none = len(rows), [None] * len(rows)   # object columns: None stays None, not NaN
        out = pd.DataFrame({
            "image_embedding": none, "text_embedding": none, "cosine": np.full(n, np.nan),
            "match_score": np.full(n, np.nan), "concepts": none, "n_regions": none,
            "box_source": none, "answer": none, "entailment": none, "entailment_probs": none,
            "box": none, "box_score": np.full(n, np.nan), "gallery_images": none,
            "gallery_scores": none, "error": pd.Series(errors, dtype=object)},
            columns=OUTPUT_SCHEMA.input_names())
        good = [k for k, p in enumerate(parsed) if p is not None]
        for start in range(0, len(good), BATCH_ROWS):   # memory bounded however many rows
            at = good[start:start + BATCH_ROWS]
            try:
                self._answer([parsed[k] for k in at], at, out)
            except Exception:   # a short message to the client, the trace to the server log
                log.exception("a request batch failed")
                raise MlflowException("the model failed on this batch (see the server log)",
                                      INTERNAL_ERROR) from None
        if out["n_regions"].notna().all():   # a long column when every row has it
            out["n_regions"] = out["n_regions"].astype("int64")
        return out

    def _row(self, row: dict) -> "_Row":
        """A request row checked and decoded, or RowError naming what is wrong with it."""
        text = _string(row, "text")
        sentences = {h.column: readable(v, self.cfg) for h in heads.HEADS
                     if (v := _string(row, h.column))}
        tags = _value(row, "tags")
        if tags is not None and (isinstance(tags, (str, bytes)) or not hasattr(tags, "__iter__")
                                 or not all(isinstance(t, str) for t in tags)):
            raise RowError("tags must be a list of strings")
        searches = (bool(text) and self.gallery is not None and _value(row, "image") is None
                    and _value(row, "image_path") is None)
        if searches and sentences:
            raise RowError(f"{', '.join(sentences)} needs an image")
        return _Row(
            image=None if searches else self._image(row),
            tags=list(tags) if tags is not None else [],
            # cut to what the model can read before NLTK and BPE see it; encoded as training captions
            text=self.vocabulary.encode(readable(text, self.cfg), self.cfg)
            if text else None,
            sentences=sentences)

    def _answer(self, rows: list["_Row"], at: list[int], out: pd.DataFrame) -> None:
        """Fill rows `at` of `out` with the answers for `rows` (a row without an image: its
        text's embedding and gallery search only)."""
        seen = [j for j, r in enumerate(rows) if r.image is not None]
        position = {j: i for i, j in enumerate(seen)}   # row -> its place in the visual batch
        images = [rows[j].image for j in seen]
        if seen:
            visual_inputs = _visual_batch(self.cfg, images, [rows[j].tags for j in seen])
            visual = self.model.encode_visual(visual_inputs)
        for i, j in enumerate(seen):
            out.at[at[j], "image_embedding"] = visual.g[i].float().tolist()
            out.at[at[j], "n_regions"] = len(images[i].boxes)
            out.at[at[j], "box_source"] = images[i].box_source
        with_text = [j for j, r in enumerate(rows) if r.text is not None]
        if with_text:
            encoded = [rows[j].text for j in with_text]
            ids, mask = text_batch(self.cfg, encoded)
            text = self.model.encode_text(ids, mask)
            for i, j in enumerate(with_text):
                out.at[at[j], "text_embedding"] = text.g[i].float().tolist()
                out.at[at[j], "concepts"] = encoded[i].concepts
            paired = [i for i, j in enumerate(with_text) if j in position]
            if paired:
                sel = torch.tensor([position[with_text[i]] for i in paired])
                pairs = text.take(torch.tensor(paired))
                p_match = self.model.itm_logits(self.model.fuse(pairs, visual.take(sel)))
                p_match = p_match.float().softmax(-1)[:, 1]
                cosine = (pairs.g * visual.g[sel]).sum(-1).float()
                for n, i in enumerate(paired):
                    out.at[at[with_text[i]], "cosine"] = float(cosine[n])
                    out.at[at[with_text[i]], "match_score"] = float(p_match[n])
            if self.gallery is not None:
                found = self.gallery.nearest(text.g.float().numpy())
                for (image_ids, scores), j in zip(found, with_text):
                    out.at[at[j], "gallery_images"] = image_ids
                    out.at[at[j], "gallery_scores"] = scores
        for column, head in self.heads.items():
            asked = [j for j in seen if column in rows[j].sentences]
            if not asked:
                continue
            sentences = [rows[j].sentences[column] for j in asked]
            concept_ids = [self.vocabulary.encode(s, self.cfg).concept_ids for s in sentences]
            cells = head.respond(sentences, concept_ids,
                                 visual_inputs.take(torch.tensor([position[j] for j in asked])),
                                 [rows[j].image.boxes for j in asked])
            for j, row_cells in zip(asked, cells):
                for name, value in row_cells.items():
                    out.at[at[j], name] = value

    def _image(self, row: dict):
        from PIL import Image
        data, path = _value(row, "image"), _value(row, "image_path")
        if data is None and path is None:
            raise RowError("give `image` (the file's bytes) or `image_path`")
        if data is None:
            data = self._read_image_file(path)
        elif not isinstance(data, (bytes, bytearray)):
            raise RowError("image must be the file's bytes")
        if len(data) > MAX_IMAGE_BYTES:
            raise RowError(f"image file too large ({len(data)} bytes)")
        boxes = _boxes(_value(row, "boxes"))
        try:
            with Image.open(io.BytesIO(data)) as im:
                pixels = im.width * im.height
                if pixels > MAX_IMAGE_PIXELS:   # checked from the header, before decoding
                    raise RowError(f"image too large ({pixels} pixels)")
                im.load()
                # the feature set's recipe: image size, RoIAlign, projection and geometry
                return encode_image(self.backbone, im, boxes, self.spec.grid,
                                    min(self.spec.max_regions, self.cfg.max_regions))
        except Image.DecompressionBombError as e:   # PIL's own, larger limit, raised by open
            n = re.search(r"\((\d+) pixels\)", str(e))
            raise RowError(f"image too large ({n[1] if n else 'too many'} pixels)") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise RowError(f"the image does not decode: {type(e).__name__}: {e}") from None

    def _read_image_file(self, path) -> bytes:
        """The bytes of a regular file under the image root. Every refusal is the same error,
        so an answer tells nothing about what exists outside the root."""
        if self.image_root is None or not isinstance(path, str):
            raise RowError(NOT_ALLOWED)
        try:
            full = (self.image_root / path).resolve()   # `..` and symlinks resolved, then checked
            # a FIFO or device could block the open or the read: regular files only
            if not full.is_relative_to(self.image_root) or not stat.S_ISREG(full.stat().st_mode):
                raise RowError(NOT_ALLOWED)
            # non-blocking and no symlink: a FIFO or link swapped in after the checks cannot jam
            fd = os.open(full, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (OSError, ValueError, RuntimeError):   # missing, unreadable, NUL, symlink loop
            raise RowError(NOT_ALLOWED) from None
        with os.fdopen(fd, "rb") as f:
            try:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise RowError(NOT_ALLOWED)
                if st.st_size > MAX_IMAGE_BYTES:   # before reading any of it
                    raise RowError(f"image file too large ({st.st_size} bytes)")
                return f.read(MAX_IMAGE_BYTES + 1)   # +1: a file grown since is still refused
            except OSError:
                raise RowError(NOT_ALLOWED) from None


@dataclass
class _Row:
    image: object            # features.extract.EncodedImage; None: a text-only gallery search
    tags: list
    text: object             # model.text.EncodedText or None
    sentences: dict          # request column of a task head -> its text (questions, ...)


def _value(row: dict, key: str):
    """A request cell, None when the column is absent or the cell is null."""
    v = row.get(key)
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    return v


def _string(row: dict, key: str) -> str | None:
    v = _value(row, key)
    if v is not None and not isinstance(v, str):
        raise RowError(f"{key} must be a string")
    return v


def _boxes(boxes) -> np.ndarray | None:
    if boxes is None:
        return None
    try:
        b = [[float(v) for v in box] for box in boxes]
    except (TypeError, ValueError):
        b = None
    if b is None or any(len(box) != 4 for box in b):
        raise RowError("boxes must be [x1, y1, x2, y2] numbers")
    return np.asarray(b, np.float32).reshape(-1, 4)


def _one_line(message: str, limit: int = 300) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[:limit - 3] + "..."


def _visual_batch(cfg: ModelConfig, images: list, tags: list) -> VisualInputs:
    """encode_visual's input for the rows: padded tag sequences, regions and geometry."""
    tag_ids, tag_mask = pad_rows([torch.tensor(tag_sequence(t or [], cfg))
                                  for t in tags], cfg.pad_id)
    regions, region_mask = pad_rows([im.vectors for im in images], 0.0)
    geometry, _ = pad_rows([torch.from_numpy(im.geometry) for im in images], 0.0)
    return VisualInputs(tag_ids, tag_mask, regions, geometry, region_mask)


def packaged_weights(spec) -> str | None:
    """The installed weights file of a feature set whose tower ships its weights as a package
    (EfficientNet's ImageNet weights), else None."""
    if spec.backbone in EFFICIENTNETS and spec.pretrained == "imagenet":
        return efficientnet_weights_file(spec.backbone)
    return None


def log_pyfunc(checkpoint, warehouse, feature_set: str | None = None, vocab: str | None = None,
               artifact_path: str = "model", head_checkpoints: dict | None = None,
               input_example=None, backbone_weights=None,
               registered_model_name: str | None = None, gallery_split: str | None = None):
    """Log the served model to the active MLflow run (or a new one) and return its ModelInfo.
    `feature_set`/`vocab` default to the ones the checkpoint's config was built for.
    `backbone_weights`: the backbone checkpoint file when the feature set was extracted from a
    local file (its hash must be the recorded one; a seeded random init needs none). The package
    holds all it needs (weights-only checkpoints, feature-set record, concept vocabulary, backbone
    weights, optional task-head checkpoints: `head_checkpoints` {"vqa" | "ve" | "refexp": file},
    and with `gallery_split` the image vectors of that split in an index, which a caption
    searches), and loading it runs only the project's code (CODE)."""
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    state = load_checkpoint(checkpoint)
    state_cfg = state["model_config"]
    feature_set = feature_set or state_cfg.get("feature_set")
    vocab = vocab or state_cfg.get("vocab_version")
    if not feature_set or not vocab:
        raise ValueError("name the feature set and vocabulary: the checkpoint does not record them")
    spec = require_feature_set(wh, feature_set)
    if spec.kind != "extracted":
        raise ValueError(f"feature set {spec.id} was {spec.kind} ({spec.backbone}): serving can "
                         "only compute vectors for extracted feature sets")
    with tempfile.TemporaryDirectory(prefix="mvp-serving-") as tmp:
        tmp = Path(tmp)
        artifacts = {"checkpoint": str(save_weights_only(state, tmp / "model.pt"))}
        (tmp / "feature_set.json").write_text(json.dumps(spec.row(), sort_keys=True))
        artifacts["feature_set"] = str(tmp / "feature_set.json")
        artifacts["vocabulary"] = str(concepts.ConceptVocabulary.from_warehouse(
            wh, vocab).write(tmp / "vocabulary.json"))
        if backbone_weights is None and packaged_weights(spec) is not None:
            backbone_weights = packaged_weights(spec)
        if spec.pretrained != "none":
            if backbone_weights is None:
                raise ValueError(f"feature set {spec.id} used weights {spec.pretrained!r}: pass "
                                 "backbone_weights=<that file> so the package can hold them")
            if file_sha256(backbone_weights) != spec.weights_sha256:
                raise ValueError(f"{backbone_weights} is not the backbone of feature set "
                                 f"{spec.id} (weights hash differs)")
            artifacts["backbone_weights"] = str(backbone_weights)
        for name, head_checkpoint in (head_checkpoints or {}).items():
            task = TASKS[name]
            heads.require(task)
            head_cfg = load_checkpoint(head_checkpoint)["model_config"]
            if head_cfg.get("feature_set") != spec.id:
                raise ValueError(f"the {name} checkpoint was built for feature set "
                                 f"{head_cfg.get('feature_set')}, the package serves {spec.id}")
            artifacts[heads.artifact(task)] = str(head_checkpoint)
        if gallery_split is not None:
            model = MVP(ModelConfig(**{**state_cfg, "feature_set": spec.id,
                                       "vocab_version": vocab}))
            load_weights(model, state)
            artifacts.update(build_gallery(model, wh, gallery_split, tmp))
        return mlflow.pyfunc.log_model(
            # models-from-code: the package holds CODE, not a CloudPickle of a Python object
            name=artifact_path, python_model=str(CODE), artifacts=artifacts,
            signature=SIGNATURE, input_example=input_example,
            registered_model_name=registered_model_name,
            pip_requirements=["mvp"],  # the project package: model/, features/, warehouse/
            metadata={"feature_set": spec.id, "vocab": vocab, "backbone": spec.backbone})


def log_to_run(trained: dict, warehouse, tracking_uri: str | None = None) -> str:
    """Log the serving package of a finished training run (pretrain's result: checkpoint and
    run id) into that run, so every run is registrable; returns the package's model URI."""
    from model.training.tracking import tracking_uri as resolve_uri
    mlflow.set_tracking_uri(resolve_uri(tracking_uri))
    with mlflow.start_run(run_id=trained["run_id"]):
        return log_pyfunc(trained["checkpoint"], warehouse).model_uri
