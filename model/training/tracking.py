"""MLflow tracking shared by every training job (pre-training, fine-tuning, the pipeline): where
the store is, and runs that resume, nest and sample system metrics (CPU, memory, GPU)."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # logs, not terminals
import mlflow  # noqa: E402

SYSTEM_METRICS_INTERVAL_S = 5.0  # short jobs still get samples; long ones stay cheap


def tracking_uri(uri: str | None = None) -> str:
    """`uri`, else MLFLOW_TRACKING_URI, else a sqlite store in the project folder."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _artifact_root(uri: str) -> str | None:
    """Artifacts of a sqlite store go next to its database (MLflow's default is ./mlruns of
    whatever the cwd happens to be); a server decides for itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


_READY: set[str] = set()


def ready_store(uri: str) -> None:
    """Make a sqlite store safe to open. MLflow creates a new database by running its schema
    migrations in place, so a process killed meanwhile leaves a half-made file that every later
    open fails on ("table ... already exists"). A new store is therefore built in a private file
    and linked into place only when complete (os.link: a concurrent creator's store wins, ours
    is dropped); a half-made one that holds no runs is set aside and built again."""
    if uri in _READY or not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///"):])
    if path.exists() and not _half_made(path):
        _READY.add(uri)
        return
    if path.exists():
        path.rename(path.with_name(f"{path.name}.incomplete-{os.getpid()}"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    tmp.unlink(missing_ok=True)
    mlflow.MlflowClient(f"sqlite:///{tmp}").search_experiments()   # runs the migrations
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    _READY.add(uri)


def _half_made(path: Path) -> bool:
    """A store whose creation was interrupted: not stamped with this MLflow's schema revision
    (the stamp is a migration's last write) and holding no runs or registered models a user
    could lose by setting it aside (it is renamed, never deleted). Read with sqlite3: MLflow
    caches a store per URI once it has opened it."""
    import sqlite3

    from mlflow.store.db.utils import _get_latest_schema_revision  # MLflow's own head revision
    con = sqlite3.connect(path)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        stamped = "alembic_version" in tables and con.execute(
            "SELECT version_num FROM alembic_version").fetchone() == (
                _get_latest_schema_revision(),)
        if stamped:
            return False
        # runs and registered models are what a user would lose; a half-made store has neither
        return not any(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                       for t in ("runs", "registered_models") if t in tables)
    finally:
        con.close()


def experiment_id(name: str, uri: str | None = None) -> str:
    uri = tracking_uri(uri)
    ready_store(uri)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=_artifact_root(uri))
    except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent job
        return mlflow.get_experiment_by_name(name).experiment_id


def start_run(experiment: str, run_name: str, tracking_uri: str | None = None,
              run_id: str | None = None, parent_run_id: str | None = None):
    """An ActiveRun (use it in `with`); `run_id` continues that run when the store has it (a
    checkpoint made against another store starts a new run). Returns (run, is_new)."""
    exp = experiment_id(experiment, tracking_uri)
    mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
    mlflow.set_system_metrics_samples_before_logging(1)
    if run_id is not None:
        try:
            return mlflow.start_run(run_id=run_id, log_system_metrics=True), False
        except mlflow.exceptions.MlflowException:
            pass
    nested = parent_run_id is None and mlflow.active_run() is not None
    return mlflow.start_run(experiment_id=exp, run_name=run_name, parent_run_id=parent_run_id,
                            nested=nested, log_system_metrics=True), True
