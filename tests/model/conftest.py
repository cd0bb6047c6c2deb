"""Fixtures of the model tests: a tiny pre-trained model logged and served as an MLflow pyfunc."""
import mlflow
import pytest

from model.config import ModelConfig
from model.mvp import MVP
from model.serving.pyfunc import log_pyfunc
from model.training.checkpoint import load_checkpoint
from model.training.pretrain import pretrain


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_feature_store):
    tmp = tmp_path_factory.mktemp("serving")
    wh, fs, vocab = tiny_feature_store(tmp)
    uri = f"sqlite:///{tmp}/mlflow.db"
    run = pretrain(wh, "joint", config="tiny", steps=2, out_dir=tmp / "runs", tracking_uri=uri)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run["run_id"]):
        info = log_pyfunc(run["checkpoint"], wh)
    state = load_checkpoint(run["checkpoint"])
    model = MVP(ModelConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MVP_SERVING_IMAGE_ROOT", str(tiny_feature_store.image_root))
        yield {"wh": wh, "fs": fs["feature_set"], "vocab": vocab["vocab"], "uri": uri,
               "image_root": tiny_feature_store.image_root, "info": info, "model": model.eval(), "tmp": tmp,
               "pyfunc": mlflow.pyfunc.load_model(info.model_uri)}
