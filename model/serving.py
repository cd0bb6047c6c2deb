"""The MVP model as an MLflow pyfunc that serves real requests: an image (and optionally a caption,
a question, region labels, boxes) in; embeddings, match scores and an answer out.

    info = log_pyfunc("runs/pretrain/stage2/last.pt", "runs/demo/warehouse")   # inside a run
    served = mlflow.pyfunc.load_model(info.model_uri)
    served.predict(pd.DataFrame({"image_path": ["cat.png"], "text": ["a cat on a mat"]}))
    # mlflow models predict -m <uri> -i input.json -t json --env-manager local

Request columns (all optional, but each row needs `image` or `image_path`):
    image       binary  the encoded image file (PNG, JPEG...; base64 in JSON requests)
    image_path  string  or a path readable by the server
    boxes       array<array<double>>  regions [x1, y1, x2, y2] in image pixels, best first;
                        none: the feature set's grid (its box policy for images without regions)
    tags        array<string>  region labels (the visual concepts); none: an empty tag sequence
    text        string  a caption to embed and match against the image
    question    string  answered when the package holds a VQA head (model/vqa_hook.py)
MLflow's JSON request reader (scoring server, `mlflow models predict`) cannot take a null in a
binary or array column: in a JSON request give `image`, `boxes`, `tags` in every row or in none,
and box coordinates as JSON floats (10.0: it refuses to cast integers to double).
Response columns per row:
    image_embedding  g_v (unit vector)          text_embedding  g_t (unit), null without text
    cosine           g_t . g_v (dual encoder)   match_score     ITM p(match) (cross encoder)
    concepts         the caption's concepts fed to the model (null: NLTK data missing)
    n_regions, box_source ("given" | "grid"), answer (null without a VQA head or question)

The image path is the feature set's own recipe (features.extract.encode_image): the same
backbone and weights (the recorded hash is checked at load), image size, RoIAlign, projection and
geometry, so the vectors are those training saw. The text path is the training one
(serving_text.py). The package holds everything it needs: the weights-only checkpoint, the
feature-set record, the concept vocabulary, the backbone's weights file when the feature set was
extracted from a local file (random init is seeded and needs none), and an optional VQA
checkpoint. It is logged as MLflow models-from-code: the package holds the short code file
model/serving_code.py, not a pickled Python object, and that file imports this module from the
installed `mvp` package (pip requirements of the model). Loading a package therefore runs only
the project's code, and its checkpoints load weights-only (model/checkpoint.py).
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from features.extract import backbone_for_feature_set, encode_image
from features.feature_sets import FeatureSetSpec, require_feature_set
from model import serving_text, vqa_hook
from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.data import pad_rows, tag_sequence
from model.mvp import MVP
from model.train import load_weights
from warehouse.hashing import file_sha256
from warehouse.store import Warehouse

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
import mlflow  # noqa: E402
from mlflow.models import ModelSignature  # noqa: E402
from mlflow.types.schema import Array, ColSpec, Schema  # noqa: E402

INPUT_SCHEMA = Schema([
    ColSpec("binary", "image", required=False),
    ColSpec("string", "image_path", required=False),
    ColSpec(Array(Array("double")), "boxes", required=False),
    ColSpec(Array("string"), "tags", required=False),
    ColSpec("string", "text", required=False),
    ColSpec("string", "question", required=False),
])
OUTPUT_SCHEMA = Schema([
    ColSpec(Array("float"), "image_embedding"),
    ColSpec(Array("float"), "text_embedding", required=False),
    ColSpec("double", "cosine", required=False),
    ColSpec("double", "match_score", required=False),
    ColSpec(Array("string"), "concepts", required=False),
    ColSpec("long", "n_regions"),
    ColSpec("string", "box_source"),
    ColSpec("string", "answer", required=False),
])
SIGNATURE = ModelSignature(inputs=INPUT_SCHEMA, outputs=OUTPUT_SCHEMA)
CODE = Path(__file__).with_name("serving_code.py")   # what a package runs: set_model(...)


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
        # raises FeatureSetMismatch unless the weights hash, width and size are the recorded ones
        self.backbone = backbone_for_feature_set(self.spec, art.get("backbone_weights"))
        self.vocabulary = serving_text.ConceptVocabulary.read(art["vocabulary"])
        self.vqa = vqa_hook.load(art.get("vqa_checkpoint"))

    @torch.inference_mode()
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        rows = model_input.to_dict("records")
        if not rows:
            return pd.DataFrame(columns=OUTPUT_SCHEMA.input_names())
        images = [self._image(k, row) for k, row in enumerate(rows)]
        visual_inputs = _visual_batch(self.cfg, images, [_value(r, "tags") for r in rows])
        visual = self.model.encode_visual(*visual_inputs)
        out = pd.DataFrame({
            "image_embedding": [g.tolist() for g in visual.g.float()],
            "text_embedding": None, "cosine": np.nan, "match_score": np.nan, "concepts": None,
            "n_regions": [len(im.boxes) for im in images],
            "box_source": [im.box_source for im in images], "answer": None})
        with_text = [k for k, r in enumerate(rows) if _value(r, "text")]
        if with_text:
            encoded = [self.vocabulary.encode(rows[k]["text"], self.cfg) for k in with_text]
            ids, mask = serving_text.text_batch(self.cfg, encoded)
            text = self.model.encode_text(ids, mask)
            sel = torch.tensor(with_text)
            fused = self.model.fuse(text, visual.take(sel))
            p_match = self.model.itm_logits(fused).float().softmax(-1)[:, 1]
            cosine = (text.g * visual.g[sel]).sum(-1).float()
            for j, k in enumerate(with_text):
                out.at[k, "text_embedding"] = text.g[j].float().tolist()
                out.at[k, "cosine"] = float(cosine[j])
                out.at[k, "match_score"] = float(p_match[j])
                out.at[k, "concepts"] = encoded[j].concepts
        asked = [k for k, r in enumerate(rows) if _value(r, "question")]
        if asked and self.vqa is not None:
            sel = torch.tensor(asked)
            questions = [rows[k]["question"] for k in asked]
            concepts = [self.vocabulary.encode(q, self.cfg).concept_ids for q in questions]
            answers = self.vqa.answer(questions, concepts, *(x[sel] for x in visual_inputs))
            for k, a in zip(asked, answers):
                out.at[k, "answer"] = a
        return out

    def _image(self, k: int, row: dict):
        from PIL import Image
        data, path = _value(row, "image"), _value(row, "image_path")
        if data is None and not path:
            raise ValueError(f"row {k}: give `image` (the file's bytes) or `image_path`")
        try:
            with Image.open(io.BytesIO(data) if data is not None else path) as im:
                im.load()
                boxes = _value(row, "boxes")
                boxes = None if boxes is None else np.asarray([list(b) for b in boxes],
                                                              np.float32).reshape(-1, 4)
                return encode_image(self.backbone, im, boxes, self.spec.grid,
                                    min(self.spec.max_regions, self.cfg.max_regions))
        except (OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"row {k}: the image does not decode: {type(e).__name__}: {e}") \
                from e


def _value(row: dict, key: str):
    """A request cell, None when the column is absent or the cell is null."""
    v = row.get(key)
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    return v


def _visual_batch(cfg: ModelConfig, images: list, tags: list):
    """encode_visual's arguments for the rows: padded tag sequences, regions and geometry."""
    tag_ids, tag_mask = pad_rows([torch.tensor(tag_sequence(t or [], cfg))
                                  for t in tags], cfg.pad_id)
    regions, region_mask = pad_rows([im.vectors for im in images], 0.0)
    geometry, _ = pad_rows([torch.from_numpy(im.geometry) for im in images], 0.0)
    return tag_ids, tag_mask, regions, geometry, region_mask


def _slim_checkpoint(state: dict, folder: Path) -> Path:
    """The weights and configs of a training checkpoint (no optimizer or RNG state)."""
    return save_checkpoint({k: state.get(k) for k in ("model", "model_config", "train_config")},
                           folder / "model.pt")


def log_pyfunc(checkpoint, warehouse, feature_set: str | None = None, vocab: str | None = None,
               artifact_path: str = "model", vqa_checkpoint=None, input_example=None,
               backbone_weights=None, registered_model_name: str | None = None):
    """Log the served model to the active MLflow run (or a new one) and return its ModelInfo.
    `feature_set`/`vocab` default to the ones the checkpoint's config was built for.
    `backbone_weights`: the backbone checkpoint file when the feature set was extracted from a
    local file (its hash must be the recorded one)."""
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
        artifacts = {"checkpoint": str(_slim_checkpoint(state, tmp))}
        (tmp / "feature_set.json").write_text(json.dumps(spec.row(), sort_keys=True))
        artifacts["feature_set"] = str(tmp / "feature_set.json")
        artifacts["vocabulary"] = str(serving_text.ConceptVocabulary.from_warehouse(
            wh, vocab).write(tmp / "vocabulary.json"))
        if spec.pretrained != "none":
            if backbone_weights is None:
                raise ValueError(f"feature set {spec.id} used weights {spec.pretrained!r}: pass "
                                 "backbone_weights=<that file> so the package can hold them")
            if file_sha256(backbone_weights) != spec.weights_sha256:
                raise ValueError(f"{backbone_weights} is not the backbone of feature set "
                                 f"{spec.id} (weights hash differs)")
            artifacts["backbone_weights"] = str(backbone_weights)
        if vqa_checkpoint is not None:
            vqa_hook.require()
            vqa_cfg = load_checkpoint(vqa_checkpoint)["model_config"]
            if vqa_cfg.get("feature_set") != spec.id:
                raise ValueError(f"the VQA checkpoint was built for feature set "
                                 f"{vqa_cfg.get('feature_set')}, the package serves {spec.id}")
            artifacts["vqa_checkpoint"] = str(vqa_checkpoint)
        return mlflow.pyfunc.log_model(
            # models-from-code: the package holds CODE, not a CloudPickle of a Python object
            name=artifact_path, python_model=str(CODE), artifacts=artifacts,
            signature=SIGNATURE, input_example=input_example,
            registered_model_name=registered_model_name,
            pip_requirements=["mvp"],  # the project package: model/, features/, warehouse/
            metadata={"feature_set": spec.id, "vocab": vocab, "backbone": spec.backbone})
