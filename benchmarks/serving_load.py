"""Load on `mlflow models serve`: 20 concurrent clients send a fixed number of requests, one
row in ten bad (wrong types, a decompression bomb, undecodable bytes, a FIFO or a path outside
the image root), to a small model built on the fly as tests/model/test_serving.py builds one. Reports
p50/p99 latency and throughput, checks that every good row gets the answer a single-threaded
reference got for it and every bad row its own error, and that the server still answers after.
Loopback only; the server is stopped at the end.

    python benchmarks/serving_load.py [--requests 400] [--clients 20] [--rows 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(HERE), str(HERE / "tests")]
from conftest import _build_tiny_feature_store  # noqa: E402  (also sets the offline env)


def build_model(tmp: Path) -> tuple[str, str, list[str], list[str]]:
    """The served model of tests/model/test_serving.py: (tracking uri, model uri, image paths,
    captions)."""
    import mlflow

    from model.serving.pyfunc import log_pyfunc
    from model.training.pretrain import pretrain
    from warehouse.catalog import connect
    wh, _, _ = _build_tiny_feature_store(tmp)
    uri = f"sqlite:///{tmp}/mlflow.db"
    run = pretrain(wh, "joint", config="tiny", steps=2, out_dir=tmp / "runs", tracking_uri=uri)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run["run_id"]):
        info = log_pyfunc(run["checkpoint"], wh)
    with connect(wh) as con:
        paths = [p for p, in con.execute("SELECT path FROM images ORDER BY id").fetchall()]
        captions = [t for t, in con.execute("SELECT text FROM captions ORDER BY id").fetchall()]
    return uri, info.model_uri, paths, captions


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG that claims width x height pixels in a few bytes."""
    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, body: dict, timeout: float) -> tuple[int, dict | str, float]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                     json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    elapsed = time.perf_counter() - start
    try:
        return status, json.loads(text), elapsed
    except ValueError:
        return status, text, elapsed


def start_server(model_uri: str, port: int, env: dict, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager",
         "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True)   # its own process group: uvicorn goes down with it
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"the server did not answer /ping in 180 s: {log.read_text()[-2000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def make_requests(n: int, rows: int, images: list[bytes], paths: list[str], captions: list[str],
                  hostile: dict, seed: int = 0) -> list[tuple[dict, list]]:
    """n requests of `rows` rows: (body, per row ("good", image k, caption) or ("bad", kind)).
    One request in five names its images by path (the JSON reader takes no null in a binary
    column, so a request gives bytes or paths)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        by_path = i % 5 == 4
        records, truth = [], []
        for _ in range(rows):
            k, caption = rng.randrange(len(images)), rng.choice(captions)
            row = {"image_path": paths[k]} if by_path else {
                "image": base64.b64encode(images[k]).decode()}
            row["text"] = caption
            if rng.random() < 0.1:
                kind = rng.choice(["fifo", "outside"] if by_path else
                                  ["text list", "text number", "bomb", "garbage"])
                if kind in ("fifo", "outside"):
                    row["image_path"] = hostile[kind]
                elif kind == "text list":
                    row["text"] = ["not", "a", "string"]
                elif kind == "text number":
                    row["text"] = 7
                else:
                    row["image"] = base64.b64encode(hostile[kind]).decode()
                truth.append(("bad", kind))
            else:
                truth.append(("good", k, caption))
            records.append(row)
        out.append(({"dataframe_records": records}, truth))
    return out


EXPECTED = {"fifo": "image_path not allowed", "outside": "image_path not allowed",
            "text list": "text must be a string", "text number": "text must be a string",
            "bomb": "image too large (400000000 pixels)", "garbage": "the image does not decode"}


def check(answer: dict, truth: tuple, reference: dict) -> str | None:
    """None when a row's answer is what it should be, else what is wrong."""
    if truth[0] == "bad":
        return None if EXPECTED[truth[1]] in (answer["error"] or "") else \
            f"bad row ({truth[1]}): {answer['error']}"
    if answer["error"]:
        return f"good row refused: {answer['error']}"
    ref = reference[truth[1:]]
    same = (np.allclose(answer["image_embedding"], ref["image_embedding"], atol=1e-5)
            and np.allclose(answer["text_embedding"], ref["text_embedding"], atol=1e-5)
            and abs(answer["match_score"] - ref["match_score"]) < 1e-5)
    return None if same else "good row answered differently from the reference"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--rows", type=int, default=2, help="rows per request")
    ap.add_argument("--time-limit", type=float, default=600, help="seconds for the load phase")
    ap.add_argument("--json", type=Path, help="write the report here too")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="mvp-serving-load-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        uri, model_uri, paths, captions = build_model(tmp)
        print(f"model built in {time.perf_counter() - t0:.0f} s: {model_uri}", flush=True)
        images = [Path(p).read_bytes() for p in paths]
        fifo = tmp / "img" / "pipe.png"   # inside the image root: refused as not a regular file
        os.mkfifo(fifo)
        outside = tmp.parent / f"{tmp.name}-outside.png"   # outside the root: refused
        hostile = {"fifo": str(fifo), "outside": str(outside),
                   "bomb": png_bomb(), "garbage": b"not an image"}
        port = free_port()
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MVP_SERVING_IMAGE_ROOT": str(tmp),
               "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
               # MLflow starts `uvicorn` from PATH: this interpreter's
               "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
        t0 = time.perf_counter()
        server = start_server(model_uri, port, env, tmp / "server.log")
        try:
            print(f"server up on 127.0.0.1:{port} in {time.perf_counter() - t0:.0f} s",
                  flush=True)
            requests = make_requests(args.requests, args.rows, images, paths, captions, hostile)
            # the single-threaded reference: each good (image, caption) alone, one at a time
            reference = {}
            for _, truth in requests:
                for t in truth:
                    if t[0] == "good" and t[1:] not in reference:
                        status, body, _ = post(port, {"dataframe_records": [{
                            "image": base64.b64encode(images[t[1]]).decode(), "text": t[2]}]},
                            60)
                        assert status == 200, body
                        reference[t[1:]] = body["predictions"][0]

            deadline = time.monotonic() + args.time_limit

            def one(item):
                body, truth = item
                if time.monotonic() > deadline:
                    return None
                try:
                    status, answer, elapsed = post(port, body, 120)
                except OSError as e:   # refused, reset, timed out
                    return {"latency": None, "problems": [f"{type(e).__name__}: {e}"]}
                if status != 200:
                    return {"latency": elapsed, "problems": [f"HTTP {status}: {str(answer)[:200]}"]}
                rows = answer["predictions"]
                problems = [p for a, t in zip(rows, truth) if (p := check(a, t, reference))]
                return {"latency": elapsed, "problems": problems}

            start = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                results = list(pool.map(one, requests))
            wall = time.perf_counter() - start

            sent = [r for r in results if r is not None]
            latencies = np.array([r["latency"] for r in sent if r["latency"] is not None])
            problems = [p for r in sent for p in r["problems"]]
            bad_rows = sum(t[0] == "bad" for _, truth in requests for t in truth)
            ping_ok = post(port, {"dataframe_records": [{
                "image": base64.b64encode(images[0]).decode(), "text": captions[0]}]},
                60)[0] == 200
            report = {
                "requests": len(requests), "sent": len(sent), "rows_per_request": args.rows,
                "clients": args.clients, "bad_rows": bad_rows,
                "good_rows": len(requests) * args.rows - bad_rows,
                "wall_s": round(wall, 2),
                "requests_per_s": round(len(latencies) / wall, 2),
                "rows_per_s": round(len(latencies) * args.rows / wall, 2),
                "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
                "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1),
                "max_ms": round(float(latencies.max()) * 1000, 1),
                "problems": len(problems), "problem_examples": sorted(set(problems))[:5],
                "server_up_after": ping_ok and server.poll() is None}
        finally:
            stop_server(server)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    r = main()
    sys.exit(0 if r["problems"] == 0 and r["server_up_after"] and r["sent"] == r["requests"]
             else 1)
