"""Run a pipeline step once per fingerprint of its inputs, so a rerun skips what is done and an
interrupted step picks up its own folder."""
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
    """The stored result of a finished step whose files all still exist, else None. Prefect's
    result cache alone would not do: a step's effect lives in files and in the warehouse, which a
    user may delete or rebuild, so the check looks at the files themselves."""
    done = folder / "result.json"
    if not done.exists():
        return None
    result = json.loads(done.read_text())
    if not all(Path(p).exists() for p in result.get("files", [])):
        return None
    return {**result, "cached": True}


def run_once(root: str | Path, name: str, inputs: dict, step: Callable[[Path], dict]) -> dict:
    """`step(folder)` in root/<name>-<fingerprint>/, its result (a JSON-able dict) stored there
    atomically when it returns; with the same inputs, the stored result ("cached": True) while
    the files it lists under "files" exist, else a rerun in the same folder (a training step
    resumes from its checkpoint). Chained steps put the upstream folder in their inputs."""
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
