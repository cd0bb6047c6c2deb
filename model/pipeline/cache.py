"""Run a pipeline step once per fingerprint of its inputs, so a rerun skips what is done and an
interrupted step picks up its own folder.

    result = run_once("runs/pipeline", "stage1", {"warehouse": 12, "config": "small", ...},
                      lambda folder: pretrain(..., out_dir=folder))

The step writes into `root/<name>-<fingerprint>/`; its result (a JSON-able dict) is stored there
as result.json, atomically, only when it returns. A rerun with the same inputs returns the stored
result (with "cached": True) as long as every file the result names under "files" still exists;
otherwise the step runs again in the same folder (a training step then resumes from the
checkpoint it left there). Chained steps put the upstream result's folder in their inputs, so a
changed stage 1 re-runs stage 2.

Why not Prefect's result cache alone: the effect of a step lives in files and in the warehouse,
which a user may delete or rebuild; a cache entry that outlives them would claim work that is
gone. The check here looks at the files themselves.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable


def fingerprint(inputs: dict) -> str:
    blob = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def step_folder(root: str | Path, name: str, inputs: dict) -> Path:
    return Path(root) / f"{name}-{fingerprint(inputs)}"


def cached_result(folder: Path) -> dict | None:
    """The stored result of a finished step whose files all still exist, else None."""
    done = folder / "result.json"
    if not done.exists():
        return None
    result = json.loads(done.read_text())
    if not all(Path(p).exists() for p in result.get("files", [])):
        return None
    return {**result, "cached": True}


def run_once(root: str | Path, name: str, inputs: dict, step: Callable[[Path], dict]) -> dict:
    folder = step_folder(root, name, inputs)
    result = cached_result(folder)
    if result is not None:
        return result
    folder.mkdir(parents=True, exist_ok=True)
    result = {**step(folder), "inputs": inputs, "folder": str(folder)}
    tmp = folder / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=1, sort_keys=True, default=str))
    os.replace(tmp, folder / "result.json")
    return {**result, "cached": False}
