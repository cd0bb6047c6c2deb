"""No server outlives the `mvp` process that started it: not the temporary Prefect server of a
flow run without PREFECT_API_URL when the CLI is killed with SIGKILL, not after a normal exit,
and not the process groups of services (`mvp serve`) whose parent is killed."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT

from flows.local_services import OFFLINE_ENV

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs Linux pidfds")


def _env(home: Path) -> dict:
    env = {**os.environ, **OFFLINE_ENV, "PREFECT_HOME": str(home), "MVP_PROJECT_DIR": str(ROOT)}
    env.pop("PREFECT_API_URL", None)  # Prefect starts its temporary server
    return env


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _marked(marker: str) -> list[int]:
    """Live processes whose environment holds `marker` (what one test started, at any depth)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return [pid for pid in found if _alive(pid)]


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _temporary_server(cli: subprocess.Popen, timeout: float) -> tuple[int, int]:
    """(pid, port) of the CLI's temporary Prefect server once it accepts connections."""
    deadline = time.time() + timeout
    while time.time() < deadline and cli.poll() is None:
        for pid in _children(cli.pid):
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            except OSError:
                continue
            if "uvicorn" in args and "prefect.server.api.server:create_app" in args:
                port = int(args[args.index("--port") + 1])
                if _port_open(port):
                    return pid, port
        time.sleep(0.2)
    raise AssertionError(f"no temporary Prefect server (CLI exit code {cli.poll()})")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _gone_within(marker: str, seconds: float, port: int | None = None) -> list[int]:
    """The marked processes still alive (and the port still open) after `seconds`."""
    deadline = time.time() + seconds
    while True:
        left = _marked(marker)
        if not left and (port is None or not _port_open(port)) or time.time() > deadline:
            return left
        time.sleep(0.2)


@pytest.mark.slow
def test_temporary_prefect_server_dies_with_a_killed_cli(tmp_path):
    home = tmp_path / "prefect"
    marker = f"PREFECT_HOME={home}"
    with open(tmp_path / "cli.log", "w") as log:
        cli = subprocess.Popen(
            [str(BIN / "mvp"), "ingest", "--dataset", "shapes", "--n-images", "3000",
             "--source", str(tmp_path / "img"), "--warehouse", str(tmp_path / "wh")],
            env=_env(home), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        server, port = _temporary_server(cli, timeout=240)
        assert cli.poll() is None, "the flow ended before the CLI could be killed"
        cli.kill()  # SIGKILL: no atexit, no finally
        cli.wait()
        left = _gone_within(marker, 15, port)
        assert not left and not _port_open(port), (
            f"left running: {left} (server {server}), port {port} open: {_port_open(port)}")
    finally:
        cli.kill()
        _kill_all(_marked(marker))  # the old behaviour must not leak into the next tests


@pytest.mark.slow
def test_normal_exit_leaves_no_process(tmp_path):
    home = tmp_path / "prefect"
    marker = f"PREFECT_HOME={home}"
    try:
        run = subprocess.run(
            [str(BIN / "mvp"), "ingest", "--dataset", "shapes", "--n-images", "20",
             "--source", str(tmp_path / "img"), "--warehouse", str(tmp_path / "wh")],
            env=_env(home), cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "Stopping temporary server" in run.stdout + run.stderr
        assert not _gone_within(marker, 10)
    finally:
        _kill_all(_marked(marker))


def test_guarded_process_group_dies_with_its_parent(tmp_path):
    """What `mvp serve` relies on: a service's group (the leader and its children, such as
    mlflow's workers) is stopped when the process that started it is killed."""
    marker = f"MVP_ORPHAN_TEST={tmp_path}"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "from flows.orphans import guard\n"
        "p = subprocess.Popen(['sh', '-c', 'sleep 300 & sleep 300'], start_new_session=True)\n"
        "guard(p, group=True, grace=2)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(300)\n")], cwd=ROOT, env={**os.environ, "MVP_ORPHAN_TEST": str(tmp_path)},
        stdout=subprocess.PIPE, text=True)
    try:
        leader = int(parent.stdout.readline())
        deadline = time.time() + 10  # the shell and both sleeps
        while len([p for p in _marked(marker) if os.getpgid(p) == leader]) < 3:
            assert time.time() < deadline, "the group did not start"
            time.sleep(0.1)
        parent.kill()
        parent.wait()
        assert not _gone_within(marker, 5)
    finally:
        parent.kill()
        parent.stdout.close()
        _kill_all(_marked(marker))
