"""The served pyfunc under hostile requests: a bad row gets its own one-line error and the other
rows their answers, over HTTP without a stack trace; long text costs what short text does;
image_path stays inside the configured root, says nothing about other files, and never blocks
on a FIFO."""
import base64
import os
import struct
import threading
import time
import types
import zlib

import mlflow
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from helpers import training_view
from mlflow.pyfunc import scoring_server

from model.serving import pyfunc as serving
from model.text import readable
from model.training.concepts import ConceptVocabulary
from warehouse.store import Warehouse

ROOT_ENV = "MVP_SERVING_IMAGE_ROOT"


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels in a few bytes (a decompression bomb)."""
    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)   # 1-bit grey
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def image(served):  # noqa: F811
    _, _, _, _, path, text = training_view(served)
    return {"path": path, "bytes": open(path, "rb").read(), "text": text}


def test_bad_rows_get_their_error_and_the_batch_its_answers(served, image):  # noqa: F811
    raw, text = image["bytes"], image["text"]
    frame = pd.DataFrame({
        "image": [raw, raw, raw, _png_header(20000, 20000), raw, raw],
        "text": [text, None, ["a", "list"], None, 5, text],
        "boxes": [None, [[1.0, 2.0, 3.0]], None, None, None, None]})
    out = served["pyfunc"].predict(frame)
    assert list(out["error"]) == [
        None, "row 1: boxes must be [x1, y1, x2, y2] numbers", "row 2: text must be a string",
        "row 3: image too large (400000000 pixels)", "row 4: text must be a string", None]
    alone = served["pyfunc"].predict(frame.iloc[[0]])
    for k in (0, 5):   # the good rows answer as they would on their own
        assert out["image_embedding"][k] == pytest.approx(alone["image_embedding"][0], abs=1e-6)
        assert out["match_score"][k] == pytest.approx(alone["match_score"][0], abs=1e-6)
    assert out["image_embedding"][3] is None and out["n_regions"][3] is None


def test_over_http_a_bad_row_is_a_200_and_failures_carry_no_trace(served, image,  # noqa: F811
                                                                    monkeypatch):
    """The app `mlflow models serve` runs (scoring_server.init), in process."""
    client = TestClient(scoring_server.init(served["pyfunc"]))
    b64 = base64.b64encode(image["bytes"]).decode()
    bomb = base64.b64encode(_png_header(20000, 20000)).decode()
    r = client.post("/invocations", json={"dataframe_records": [
        {"image": b64, "text": image["text"]}, {"image": b64, "text": ["not", "a", "string"]},
        {"image": bomb, "text": "a red square"}]})
    assert r.status_code == 200, r.text[:2000]
    rows = r.json()["predictions"]
    assert [row["error"] for row in rows] == [
        None, "row 1: text must be a string", "row 2: image too large (400000000 pixels)"]
    assert len(rows[0]["image_embedding"]) > 0 and 0 <= rows[0]["match_score"] <= 1

    # a request MLflow cannot parse: its own short message (it echoes the body, no trace)
    r = client.post("/invocations", content=b'{"dataframe_records": [',
                    headers={"content-type": "application/json"})
    assert r.status_code == 400 and "Traceback" not in r.text

    # the model itself failing on a batch: a short message, the trace only in the server log
    model = served["pyfunc"].unwrap_python_model().model

    def fail(*args):
        raise RuntimeError("secret internals")
    monkeypatch.setattr(model, "encode_visual", fail)
    r = client.post("/invocations", json={"dataframe_records": [{"image": b64}]})
    assert r.status_code == 500
    assert "Traceback" not in r.text and "secret internals" not in r.text
    assert "the model failed on this batch" in r.json()["message"]


def test_long_text_costs_what_short_text_does(served, image):  # noqa: F811
    pyfunc, raw, text = served["pyfunc"], image["bytes"], image["text"]
    pyfunc.predict(pd.DataFrame({"image": [raw], "text": [text]}))   # warm up
    start = time.perf_counter()
    short = pyfunc.predict(pd.DataFrame({"image": [raw, raw], "text": [text, text]}))
    short_s = time.perf_counter() - start
    huge = (text + " ") * (1_000_000 // (len(text) + 1))   # ~1 MB of captions
    start = time.perf_counter()
    out = pyfunc.predict(pd.DataFrame({"image": [raw, raw], "text": [huge, text]}))
    long_s = time.perf_counter() - start
    assert long_s - short_s < 2.0, (long_s, short_s)
    # batched next to a long one, a caption with concepts still answers as it does alone
    assert out["error"].isna().all() and out["concepts"][1]
    assert out["text_embedding"][1] == pytest.approx(short["text_embedding"][0], abs=1e-6)

    # the cut keeps every token and concept the model reads of the whole text
    cfg = served["model"].cfg
    vocabulary = ConceptVocabulary.from_warehouse(Warehouse(served["wh"]), served["vocab"])
    long_caption = " ".join([text] * 20)
    assert len(readable(long_caption, cfg)) < len(long_caption)
    assert vocabulary.encode(readable(long_caption, cfg), cfg) == vocabulary.encode(long_caption,
                                                                                    cfg)
    assert readable("a  \n\n  red   square", cfg) == "a red square"
    assert readable("x" * 10_000, cfg) == ""   # one word longer than max_text_len tokens


def test_image_path_stays_in_the_root_and_refusals_look_alike(served, image,  # noqa: F811
                                                              tmp_path, monkeypatch):
    root = served["image_root"]
    secret = tmp_path / "secret.png"
    secret.write_bytes(image["bytes"])
    (root / "hostile").mkdir(exist_ok=True)
    inside = root / "hostile" / "ok.png"
    inside.write_bytes(image["bytes"])
    (root / "hostile" / "link_out.png").symlink_to(secret)
    (root / "hostile" / "link_in.png").symlink_to(inside)
    escape = os.path.relpath(secret, root)           # ../../test_x0/secret.png
    refused = [str(secret), str(tmp_path / "missing.png"), escape, "hostile/../" + escape,
               "hostile/link_out.png", "hostile/missing.png", "hostile", "/etc/passwd",
               "/dev/zero", "bad\x00name.png"]
    allowed = [str(inside), "hostile/ok.png", "hostile/link_in.png"]
    out = served["pyfunc"].predict(pd.DataFrame({"image_path": refused + allowed}))
    assert list(out["error"]) == [f"row {k}: image_path not allowed"
                                  for k in range(len(refused))] + [None] * len(allowed)

    monkeypatch.delenv(ROOT_ENV)   # no root configured: image bytes only
    bytes_only = mlflow.pyfunc.load_model(served["info"].model_uri)
    out = bytes_only.predict(pd.DataFrame({"image_path": [str(inside)],
                                           "image": [image["bytes"]]}))
    assert out["error"][0] is None   # given bytes win; the path is not read
    out = bytes_only.predict(pd.DataFrame({"image_path": [str(inside)]}))
    assert out["error"][0] == "row 0: image_path not allowed"


def test_fifos_big_files_and_slow_requests_cannot_jam_it(served, image,  # noqa: F811
                                                         monkeypatch):
    root = served["image_root"] / "jam"
    root.mkdir(exist_ok=True)
    fifo = root / "pipe.png"
    if not fifo.exists():
        os.mkfifo(fifo)
    big = root / "big.png"
    with open(big, "wb") as f:   # sparse: no disk used
        f.truncate(serving.MAX_IMAGE_BYTES + 1)
    frame = pd.DataFrame({"image_path": [str(fifo)] * 45 + [str(big)]})
    done = {}
    worker = threading.Thread(target=lambda: done.update(out=served["pyfunc"].predict(frame)),
                              daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive():   # release a reader blocked on the FIFO before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert not worker.is_alive(), "predict blocked on a FIFO"
    errors = list(done["out"]["error"])
    assert errors[:45] == [f"row {k}: image_path not allowed" for k in range(45)]
    assert errors[45] == f"row 45: image file too large ({serving.MAX_IMAGE_BYTES + 1} bytes)"

    # the per-request time budget: rows not started when it runs out are refused
    clock = iter(range(0, 10_000, 20))   # each look at the clock: 20 s later
    monkeypatch.setattr(serving, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    out = served["pyfunc"].predict(pd.DataFrame({"image": [image["bytes"]] * 3}))
    assert list(out["error"]) == [None, "row 1: request time budget exceeded",
                                  "row 2: request time budget exceeded"]
