"""Progress of a training job in the log: a line every `every_s` seconds and at the end, with the
rate and the time left (inside a Prefect task the lines land in the flow run's logs)."""
from __future__ import annotations

import time


class Progress:
    def __init__(self, name: str, total: int, start: int = 0, every_s: float = 15.0,
                 keys: tuple[str, ...] = ("loss",)):
        self.name, self.total, self.start, self.every_s, self.keys = (
            name, total, start, every_s, keys)
        self.t0 = self.last = time.perf_counter()

    def step(self, step: int, log: dict) -> None:
        now = time.perf_counter()
        if now - self.last < self.every_s and step < self.total:
            return
        self.last = now
        rate = (step - self.start) / max(now - self.t0, 1e-9)
        left = (self.total - step) / rate if rate > 0 else float("nan")
        values = " ".join(f"{k} {log[k]:.4g}" for k in self.keys if k in log)
        print(f"{self.name}: step {step}/{self.total} {values} | {rate:.2f} steps/s, "
              f"{left:.0f} s left", flush=True)
