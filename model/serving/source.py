"""Where a model to evaluate comes from: a checkpoint file, or a registered/logged MLflow model (a
serving package of model/serving/pyfunc.py, whose MLmodel file names its checkpoint artifact)."""
from __future__ import annotations

from pathlib import Path

import yaml

from model.serving.heads import HEADS, artifact


def is_local(model: str) -> bool:
    """Whether `model` names a checkpoint file rather than an MLflow model URI."""
    return "://" not in model and not model.startswith(("models:/", "runs:/"))


def resolve_model(model: str, tracking_uri: str | None = None) -> dict:
    if is_local(model):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint {model}")
        return {"checkpoint": str(path), "heads": {}, "source": model}
    import mlflow

    from model.training.tracking import tracking_uri as resolve_uri
    mlflow.set_tracking_uri(resolve_uri(tracking_uri))
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model))
    spec = yaml.safe_load((local / "MLmodel").read_text())
    artifacts = spec["flavors"]["python_function"].get("artifacts", {})

    def path_of(name: str) -> str | None:
        entry = artifacts.get(name)
        return str(local / entry["path"]) if entry else None

    if path_of("checkpoint") is None:
        raise ValueError(f"{model} is not an mvp serving package (no checkpoint artifact)")
    packaged = {t.name: path_of(artifact(t)) for t in HEADS}
    return {"checkpoint": path_of("checkpoint"), "source": model,
            "heads": {name: path for name, path in packaged.items() if path}}
