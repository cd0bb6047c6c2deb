"""`make serve` / `mvp serve`: Prefect server + UI, a process worker on pool mvp-local and MLflow
server + UI, on loopback; Ctrl-C (or SIGTERM) stops all three. State stays in the project folder:
.prefect/, mlflow.db, mlartifacts/ (the store `mvp pretrain` uses without a server), runs/services/."""
from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path

from flows.local_services import (
    console_script,
    service_env,
    start_mlflow_server,
    start_prefect_server,
    start_worker,
)

POOL = "mvp-local"


def serve(project: Path, prefect_port: int = 4200, mlflow_port: int = 5000,
          ready: threading.Event | None = None, stop: threading.Event | None = None) -> None:
    """Run the services until `stop` is set (Ctrl-C or SIGTERM in the main thread).

    Args:
        project: the project folder; Prefect state in its .prefect, MLflow in its mlflow.db
        prefect_port: Prefect server and UI port on 127.0.0.1
        mlflow_port: MLflow server and UI port on 127.0.0.1
        ready: set once every service answers
        stop: set to stop them (none: a private event)
    """
    project = Path(project).resolve()
    home, logs = project / ".prefect", project / "runs" / "services"
    services = []
    try:
        prefect = start_prefect_server(home, prefect_port)
        services.append(prefect)
        mlflow = start_mlflow_server(project, mlflow_port, log=logs / "mlflow.log")
        services.append(mlflow)
        # the profile in .prefect remembers the server, so `make deploy` and the worker find it
        subprocess.run([console_script("prefect"), "config", "set",
                        f"PREFECT_API_URL={prefect.url}"],
                       env=service_env({"PREFECT_HOME": str(home)}), check=True,
                       capture_output=True)
        services.append(start_worker(POOL, home, prefect.url, {
            "MLFLOW_TRACKING_URI": mlflow.url, "MVP_PROJECT_DIR": str(project)}))
        print(_banner(prefect.url, mlflow.url, project), flush=True)
        if ready is not None:
            ready.set()
        stop = stop or threading.Event()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(1.0):
            dead = [s.name for s in services if s.process.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} stopped; see the logs in {logs} and {home}")
    finally:
        for s in reversed(services):
            s.stop()
        # forget the server again: `make demo` after `make serve` must not look for a dead API
        subprocess.run([console_script("prefect"), "config", "unset", "PREFECT_API_URL"],
                       env=service_env({"PREFECT_HOME": str(home)}), capture_output=True)
        print("services stopped", flush=True)


def _banner(prefect_api: str, mlflow_url: str, project: Path) -> str:
    env = (f"PREFECT_HOME={project / '.prefect'} PREFECT_API_URL={prefect_api} "
           f"MLFLOW_TRACKING_URI={mlflow_url} MVP_PROJECT_DIR={project}")
    return "\n".join([
        "",
        f"Prefect UI   {prefect_api.removesuffix('/api')}",
        f"MLflow UI    {mlflow_url}",
        f"worker       pool {POOL} (flow runs log to MLflow at {mlflow_url})",
        "",
        "In another terminal:",
        "  make deploy                                    # prefect deploy --all",
        "  make pipeline                                  # prefect deployment run 'mvp-pipeline/demo'",
        "or by hand:",
        f"  export {env}",
        "  .venv/bin/prefect --no-prompt deploy --all",
        "  .venv/bin/prefect deployment run 'mvp-pipeline/demo'",
        "",
        "Ctrl-C stops the services.",
    ])
