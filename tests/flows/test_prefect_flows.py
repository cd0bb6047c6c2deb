"""The ingest flow runs for real with Prefect: ephemeral (no server), and against a running
server through a deployment from prefect.yaml picked up by a process worker."""
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from helpers import ROOT

from flows.local_services import OFFLINE_ENV, start_prefect_server
from warehouse.catalog import table_counts

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _env(home: Path, api_url: str | None = None) -> dict:
    env = {**os.environ, **OFFLINE_ENV, "PREFECT_HOME": str(home), "MVP_PROJECT_DIR": str(ROOT)}
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def _run(args, env, timeout=240, cwd=ROOT):
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_mvp_ingest_runs_the_flow_without_a_server(tmp_path):
    wh = tmp_path / "wh"
    out = _run([str(BIN / "mvp"), "ingest", "--dataset", "shapes", "--n-images", "25",
                "--source", str(tmp_path / "img"), "--warehouse", str(wh)],
               _env(tmp_path / "prefect"))
    assert "Flow run" in out and "[balanced]" in out
    assert dict(table_counts(wh))["images"] == 25
    bad = subprocess.run([str(BIN / "mvp"), "ingest", "--dataset", "folder", "--source",
                          str(tmp_path / "absent"), "--warehouse", str(wh), "--no-prefect"],
                         env=_env(tmp_path / "prefect"), capture_output=True, text=True)
    assert bad.returncode == 2 and "absent" in bad.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    service = start_prefect_server(tmp_path_factory.mktemp("prefect-home"))
    yield service
    service.stop()


def _flow_runs(api_url: str, flow_name: str) -> list[dict]:
    req = urllib.request.Request(
        api_url + "/flow_runs/filter", method="POST",
        data=json.dumps({"flows": {"name": {"any_": [flow_name]}}}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def test_flow_against_a_running_server_and_deployment_via_worker(server, tmp_path):
    env = _env(tmp_path / "client", server.url)
    with urllib.request.urlopen(server.url.removesuffix("/api") + "/", timeout=10) as ui:
        assert ui.status == 200 and b"<html" in ui.read(2000).lower()  # the UI answers
    # 1. the CLI against the running server: the flow run is recorded there
    wh = tmp_path / "wh"
    _run([str(BIN / "mvp"), "ingest", "--dataset", "shapes", "--n-images", "15",
          "--source", str(tmp_path / "img"), "--warehouse", str(wh)], env)
    runs = _flow_runs(server.url, "mvp-ingest")
    assert [r["state_type"] for r in runs] == ["COMPLETED"]

    # 2. prefect.yaml deployments, run through a process worker
    _run([str(BIN / "prefect"), "work-pool", "create", "mvp-local", "--type", "process"], env)
    _run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], env)
    wh2 = tmp_path / "wh2"
    _run([str(BIN / "prefect"), "deployment", "run", "mvp-ingest/shapes",
          "--param", "n_images=12", "--param", f"warehouse={wh2}",
          "--param", f"source={tmp_path / 'img2'}"], env)
    _run([str(BIN / "prefect"), "worker", "start", "--pool", "mvp-local", "--run-once"], env)
    assert dict(table_counts(wh2))["images"] == 12
    states = sorted(r["state_type"] for r in _flow_runs(server.url, "mvp-ingest"))
    assert states == ["COMPLETED", "COMPLETED"]
