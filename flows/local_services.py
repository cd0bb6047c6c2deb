"""Start the real services on loopback: a Prefect server, a Prefect process worker and an MLflow
tracking + registry server, for tests and for `make serve`. Each returns a handle that stops its
process group cleanly; a watchdog stops the group if this process dies first (kill -9)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from flows.orphans import guard

OFFLINE_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true",
               "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    name: str
    url: str
    process: subprocess.Popen

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"service exited with {process.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {timeout:.0f}s; see {log}")


def console_script(name: str) -> str:
    """A console script of this environment (prefect, mlflow), whatever the PATH says."""
    return str(Path(sys.executable).parent / name)


def service_env(extra: dict) -> dict:
    """This process's environment, offline, with `extra` on top (None removes a variable)."""
    env = {**os.environ, **OFFLINE_ENV, **extra}
    return {k: v for k, v in env.items() if v is not None}


def _spawn(name: str, url: str, args: list[str], env: dict, log: Path,
           health: str | None, timeout: float) -> Service:
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(args, env=service_env(env), stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    guard(proc, group=True, grace=20)  # the whole group: mlflow and the worker start children
    service = Service(name, url, proc)
    if health is not None:
        try:
            _wait_healthy(health, proc, log, timeout)
        except Exception:
            service.stop()
            raise
    return service


def start_prefect_server(home: Path, port: int | None = None, timeout: float = 120) -> Service:
    """`prefect server start` on 127.0.0.1 with its state under `home`."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {"PREFECT_HOME": str(home), "PREFECT_API_URL": None}  # not its own client
    return _spawn("prefect", url, [console_script("prefect"), "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port)], env, home / "server.log",
                  url + "/health", timeout)


def start_mlflow_server(root: Path, port: int | None = None, timeout: float = 120,
                        log: Path | None = None) -> Service:
    """`mlflow server` on 127.0.0.1: runs and the model registry in `root`/mlflow.db, artifacts
    served from `root`/mlartifacts (the same store the CLI uses without a server)."""
    port = port or free_port()
    root = Path(root).resolve()
    args = [console_script("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", (root / "mlartifacts").as_uri(), "--workers", "1"]
    url = f"http://127.0.0.1:{port}"
    return _spawn("mlflow", url, args, {}, log or root / "mlflow-server.log", url + "/health",
                  timeout)


def start_worker(pool: str, home: Path, api_url: str, env: dict | None = None) -> Service:
    """A Prefect process worker polling `pool` (created if missing) of the server at api_url;
    `env` reaches the flow runs it starts (e.g. MLFLOW_TRACKING_URI)."""
    env = {"PREFECT_HOME": str(home), "PREFECT_API_URL": api_url, **(env or {})}
    subprocess.run([console_script("prefect"), "work-pool", "create", pool, "--type", "process",
                    "--overwrite"], env=service_env(env), check=True,
                   capture_output=True)
    return _spawn("worker", api_url, [console_script("prefect"), "worker", "start", "--pool", pool],
                  env, home / "worker.log", None, 0)
