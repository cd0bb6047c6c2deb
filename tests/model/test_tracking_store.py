"""The sqlite tracking store survives a kill during its creation: a new store appears only when
complete, and a half-made one (the state MLflow's in-place migrations leave behind) is set aside
and built again, while a store holding runs is never touched."""
import sqlite3
import subprocess
import sys

import mlflow
import pytest

from model.training import tracking


def _half_made(path):
    """What a kill mid-migration leaves (seen in benchmarks/kill_matrix.py): the tables of a
    migration created, its revision not yet stamped. Made here by stamping a complete store
    back to the revision before the one that adds the `scorers` table."""
    _open_elsewhere(path).check_returncode()
    con = sqlite3.connect(path)
    con.execute("UPDATE alembic_version SET version_num = '1a0cddfcaa16'")
    con.commit()
    con.close()


def _open_elsewhere(path):
    """Open the store in a fresh process, as the next job would (MLflow caches stores per URI
    within a process)."""
    return subprocess.run([sys.executable, "-c", "import mlflow; mlflow.MlflowClient("
                           f"'sqlite:///{path}').search_experiments()"],
                          capture_output=True, text=True)


@pytest.mark.slow
def test_a_half_made_store_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "_READY", set())
    path = tmp_path / "mlflow.db"
    _half_made(path)
    uri = f"sqlite:///{path}"
    assert _open_elsewhere(path).returncode != 0    # MLflow alone cannot open it any more
    exp = tracking.experiment_id("mvp-test", uri)
    with mlflow.start_run(experiment_id=exp):
        mlflow.log_metric("x", 1.0)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("mlflow.db.incomplete")]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".new")]


def test_a_new_store_appears_complete_and_a_used_one_is_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "_READY", set())
    uri = f"sqlite:///{tmp_path / 'sub' / 'mlflow.db'}"
    tracking.ready_store(uri)
    assert mlflow.MlflowClient(uri).search_experiments()   # Default experiment: migrated
    exp = tracking.experiment_id("mvp-test", uri)
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_metric("x", 2.0)
    monkeypatch.setattr(tracking, "_READY", set())
    tracking.ready_store(uri)                                # reopened, not rebuilt
    assert mlflow.MlflowClient(uri).get_run(run.info.run_id).data.metrics == {"x": 2.0}
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["mlflow.db"]
