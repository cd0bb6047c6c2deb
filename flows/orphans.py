"""Child processes that must not outlive this one, even when it is killed with SIGKILL (Linux
pidfds; elsewhere `guard` does nothing). The watchdog runs this file with the standard library only."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys

_watchdogs: list[subprocess.Popen] = []  # kept until exit: no "still running" warnings


def guard(process: subprocess.Popen, group: bool = False, grace: float = 5.0) -> None:
    """Stop `process` (with `group`: the whole process group it leads) once this process has
    died without stopping it.

    A small watchdog process holds pidfds of this process and of the child: if this process dies
    first, however it dies, the watchdog stops the child (SIGTERM, then SIGKILL after `grace`); if
    the child stops first, it just exits. Unlike PR_SET_PDEATHSIG it needs no hook inside the Popen
    call (Prefect owns the one of its temporary server), does not depend on which thread started
    the child, and can stop a whole process group (mlflow's and the worker's children).
    """
    if not hasattr(os, "pidfd_open"):
        return
    try:  # pidfds name these very processes: a pid reused later is never signalled
        child = os.pidfd_open(process.pid)
    except ProcessLookupError:
        return  # already gone and reaped
    me = os.pidfd_open(os.getpid())
    try:
        _watchdogs.append(subprocess.Popen(
            [sys.executable, "-I", __file__, str(me), str(child),
             str(process.pid if group else 0), str(grace)],
            pass_fds=(me, child),
            start_new_session=True,  # our terminal's Ctrl-C or hang-up must not stop it first
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    finally:
        os.close(me)
        os.close(child)


def _watch(parent: int, child: int, group: int, grace: float) -> None:
    ready, _, _ = select.select([parent, child], [], [])  # a pidfd reads ready at exit
    if child in ready:
        return  # stopped by its owner (or by itself): nothing to do

    def send(sig: int) -> None:
        try:
            if group:
                os.killpg(group, sig)
            else:
                signal.pidfd_send_signal(child, sig)
        except ProcessLookupError:
            pass

    send(signal.SIGTERM)
    select.select([child], [], [], grace)
    send(signal.SIGKILL)  # what did not stop in time; with `group`, also what the leader left


if __name__ == "__main__":
    _watch(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
