"""What several benchmarks read about their own process, and how they save results."""
from __future__ import annotations

import json
from pathlib import Path


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM), MiB."""
    return next(int(line.split()[1]) for line in Path("/proc/self/status").read_text()
                .splitlines() if line.startswith("VmHWM")) / 1024


def save_json(path: Path | None, results) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
