"""The model commands of `mvp` fail with one line naming the problem, not a traceback."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # long training or subprocesses: not in make test-fast

BIN = Path(sys.executable).parent


def test_cli_names_a_missing_checkpoint_instead_of_a_traceback(tmp_path):
    # a subprocess, as users run it (an in-process flow failure leaves Prefect's logging state
    # behind for the flows of later tests)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run([str(BIN / "mvp"), "evaluate", str(tmp_path / "absent.pt"),
                           "--warehouse", str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=300)
    # Prefect's log of the failed flow run keeps its traceback; the command ends with one line
    assert proc.returncode == 2
    assert f"mvp evaluate: error: no checkpoint {tmp_path / 'absent.pt'}" in proc.stderr
