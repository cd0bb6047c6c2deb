"""Named fault points: a test or the kill matrix sets MVP_FAULT=<point> and the process dies
there like a `kill -9`, to prove a build survives it."""
import os
import signal


def fault_point(point: str) -> None:
    if os.environ.get("MVP_FAULT") == point:
        os.kill(os.getpid(), signal.SIGKILL)
