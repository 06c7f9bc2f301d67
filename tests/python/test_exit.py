"""Interpreter exit with bridged work in flight: the process's own status, never an
abort or a hang. `EXIT_RUNS` runs of each case (CI: 10; `make exit-soak`: 500)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "exit_scenarios.py"
RUNS = int(os.environ.get("EXIT_RUNS", "10"))


@pytest.mark.parametrize("tokio", ["per_reactor", "process"])
@pytest.mark.parametrize(
    "mode, status",
    [("stopped", 0), ("sys_exit", 3), ("never_run", 0), ("never_started", 0)],
)
def test_exit_status_is_the_processs_own(mode, status, tokio):
    outcomes = {}
    for _ in range(RUNS):
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), mode, tokio],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "RUST_BACKTRACE": "0"},
        )
        outcomes[proc.returncode] = outcomes.get(proc.returncode, 0) + 1
        assert proc.returncode == status, (
            f"run exited with {proc.returncode} (want {status}); outcomes so far {outcomes}\n"
            f"{proc.stderr[-2000:]}"
        )
        assert "Fatal Python error" not in proc.stderr, proc.stderr[-2000:]
    assert outcomes == {status: RUNS}
