"""Shared fixtures. Tests never reach the network: hubs are offline and telemetry is off."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# flows run in-process use a temporary Prefect server whose state stays out of the project
import tempfile  # noqa: E402

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="mvp-test-prefect-"))
# WordNet for the concept pipeline, installed by `make install` (scripts/install_nltk_data.sh)
os.environ.setdefault("NLTK_DATA", os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), ".nltk_data"))

import json
from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture
def make_image():
    """Write a small valid image and return its path."""
    def make(path: Path, size=(32, 24), color=(200, 30, 30), fmt=None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, color).save(path, format=fmt)
        return path
    return make


@pytest.fixture
def write_json():
    def write(path: Path, obj) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj))
        return path
    return write


@pytest.fixture
def query():
    """Run SQL over a warehouse's current snapshot and return rows as tuples."""
    from warehouse.catalog import connect

    def run(warehouse, sql: str, params=None):
        with connect(warehouse) as con:
            return con.execute(sql, params or []).fetchall()
    return run


@pytest.fixture
def rejects():
    """reason -> count of the rejects in a warehouse."""
    from warehouse.catalog import connect

    def run(warehouse) -> dict[str, int]:
        with connect(warehouse) as con:
            return dict(con.execute("SELECT reason, count(*) FROM rejects GROUP BY 1").fetchall())
    return run


@pytest.fixture(scope="session")
def nltk_data():
    """The NLTK data folder, with WordNet installed by the project's script if it is missing
    (idempotent; needs apt-get once)."""
    import subprocess
    folder = os.environ["NLTK_DATA"].split(os.pathsep)[0]
    if not os.path.isfile(os.path.join(folder, "corpora", "wordnet", "lexnames")):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        subprocess.run(["bash", os.path.join(root, "scripts", "install_nltk_data.sh"), folder],
                       check=True)
    return folder


def pytest_unconfigure(config):
    # Prefect stops its temporary server at interpreter exit and logs that to a stream pytest
    # has already closed; without this, a "--- Logging error ---" trace follows the summary.
    import logging
    logging.raiseExceptions = False


@pytest.fixture(scope="session")
def tiny_feature_store(tmp_path_factory):
    """A function root -> (warehouse, feature set report, vocabulary report) giving each caller
    its own copy, under root, of one tiny feature store built once per session: 12 shapes scenes
    with mvp-tiny region features and a min_count=2 vocabulary, the smallest warehouse the
    model's data path and pre-training run on."""
    import shutil
    root = tmp_path_factory.mktemp("tiny-feature-store")
    built = _build_tiny_feature_store(root)

    def copy(root):
        wh = Path(root) / "wh"
        shutil.copytree(built[0], wh)  # snapshots name parts relative to the root
        return (wh, *built[1:])
    copy.image_root = root / "img"  # the copies share the images: their paths are absolute
    return copy


def _build_tiny_feature_store(root):
    from features.extract import extract_features
    from features.vocabulary import build_vocabulary
    from warehouse.ingest.build import ingest
    wh = root / "wh"
    ingest("shapes", root / "img", wh, n_images=12, workers=1)
    fs = extract_features(wh, backbone="mvp-tiny", max_regions=9, grid=3, progress=False)
    return wh, fs, build_vocabulary(wh, min_count=2)
