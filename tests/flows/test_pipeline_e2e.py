"""The product end to end, as a user drives it: `mvp serve` (a real Prefect server + process
worker + MLflow server on loopback), `prefect deploy --all` from prefect.yaml, `prefect deployment
run 'mvp-pipeline/demo'` on tiny data, then the registry: the champion loads by
`models:/mvp-retrieval@champion` and answers real requests. Ctrl-C stops the services."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from helpers import ROOT

from flows.local_services import OFFLINE_ENV, free_port

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

TINY = {"n_images": 24, "easy_vqa_images": 0, "backbone": "mvp-tiny", "min_count": 2,
        "config": "tiny", "stage1_steps": 3, "stage2_steps": 3, "retrieval_steps": 2,
        "vqa_steps": 3, "ve_steps": 3, "refexp_steps": 3, "k_text": 8, "k_image": 4}


def _wait_for(proc: subprocess.Popen, text: str, log: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in log.read_text():
            return
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"no {text!r} after {timeout}s:\n{log.read_text()[-3000:]}")


def _answers_html(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=20) as r:
        return r.status == 200 and b"<html" in r.read(4000).lower()


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    project = tmp_path_factory.mktemp("served")
    ports = free_port(), free_port()
    log = project / "serve.log"
    env = {**os.environ, **OFFLINE_ENV}
    env.pop("PREFECT_API_URL", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([str(BIN / "mvp"), "serve", "--prefect-port", str(ports[0]),
                             "--mlflow-port", str(ports[1])], cwd=project, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        _wait_for(proc, "Ctrl-C stops the services", log)
        yield {"prefect": f"http://127.0.0.1:{ports[0]}/api",
               "mlflow": f"http://127.0.0.1:{ports[1]}", "project": project, "process": proc,
               "log": log}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)


def _client_env(services) -> dict:
    env = {**os.environ, **OFFLINE_ENV, "PREFECT_API_URL": services["prefect"],
           "PREFECT_HOME": str(services["project"] / "client"), "MVP_PROJECT_DIR": str(ROOT),
           "MLFLOW_TRACKING_URI": services["mlflow"]}
    return env


def _run(args, env, timeout=600):
    proc = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def test_deployed_pipeline_registers_a_champion_that_serves(services, tmp_path, make_image,
                                                           monkeypatch):
    assert _answers_html(services["prefect"].removesuffix("/api") + "/")  # Prefect UI
    assert _answers_html(services["mlflow"] + "/")                        # MLflow UI
    env = _client_env(services)
    _run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], env)
    params = {**TINY, "warehouse": str(tmp_path / "wh"), "out_dir": str(tmp_path / "runs")}
    out = _run([str(BIN / "prefect"), "deployment", "run", "mvp-pipeline/demo", "--params",
                json.dumps(params), "--watch", "--watch-timeout", "540"], env)
    assert "COMPLETED" in out.upper(), out[-3000:]

    client = mlflow.MlflowClient(services["mlflow"])
    for name in ("mvp-pretrained", "mvp-retrieval", "mvp-vqa", "mvp-ve", "mvp-refexp"):
        champion = client.get_model_version_by_alias(name, "champion")
        assert champion.tags["feature_set"] and champion.tags["git_commit"]
        assert champion.tags["promotion"] == "promoted"
    pipeline_runs = client.search_runs(
        [client.get_experiment_by_name("mvp-pipeline").experiment_id])
    parents = [r for r in pipeline_runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name for r in pipeline_runs if "mlflow.parentRunId" in r.data.tags}
    assert len(parents) == 1 and {"stage1", "stage2", "retrieval", "vqa", "ve",
                                                   "refexp"} <= children
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id, "pictures")} == {
        "pictures/loss_curves.png", "pictures/retrieval_examples.png", "pictures/grounding.png",
        "pictures/referring.png"}

    mlflow.set_tracking_uri(services["mlflow"])
    monkeypatch.setenv("MVP_SERVING_IMAGE_ROOT", str(tmp_path))   # image_path is read under it
    served = mlflow.pyfunc.load_model("models:/mvp-retrieval@champion")
    image = make_image(tmp_path / "red.png", size=(64, 48))
    answer = served.predict(pd.DataFrame({"image_path": [str(image)] * 2,
                                          "text": ["a red square", "a blue circle"]}))
    assert len(answer) == 2 and len(answer["image_embedding"][0]) == len(
        answer["text_embedding"][0])
    assert all(0.0 <= s <= 1.0 for s in answer["match_score"])
    # the task heads' packages answer their own requests: a label with its probabilities, a box
    request = pd.DataFrame({"image_path": [str(image)], "boxes": [[[2.0, 2.0, 30.0, 20.0],
                                                                    [32.0, 20.0, 60.0, 44.0]]],
                            "hypothesis": ["there is a red square"],
                            "expression": ["the red square"]})
    judged = mlflow.pyfunc.load_model("models:/mvp-ve@champion").predict(request)
    assert judged["entailment"][0] in ("entailment", "neutral", "contradiction")
    assert sum(judged["entailment_probs"][0]) == pytest.approx(1.0, abs=1e-4)
    located = mlflow.pyfunc.load_model("models:/mvp-refexp@champion").predict(request)
    assert list(located["box"][0]) in request["boxes"][0] and located["error"][0] is None

    # Ctrl-C stops all three services
    proc = services["process"]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0 and "services stopped" in services["log"].read_text()
    # and the project's Prefect profile no longer points at the stopped server
    profile = (services["project"] / ".prefect" / "profiles.toml").read_text()
    assert "PREFECT_API_URL" not in profile
    with pytest.raises(OSError):
        urllib.request.urlopen(services["mlflow"] + "/health", timeout=5)
