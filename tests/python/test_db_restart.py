"""Both PostgreSQL pools while the server restarts under a stream of Rust
transactions, and while it is down for longer than they wait (scripts/db_restart.py,
on a server of its own so the shared test server is untouched)."""

import collections
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import run_script

PG_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "test-postgres.sh"


@pytest.fixture(scope="module")
def own_server(pg_dsn):
    # pg_dsn: `make test` has installed PostgreSQL and runs the shared server.
    # Not under pytest's private temp dir: the server runs as the postgres user.
    directory = Path(tempfile.mkdtemp(prefix="pyo3-twisted-pg-restart-"))
    directory.chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dsn = subprocess.run(
        ["bash", str(PG_SCRIPT), "start", str(directory / "cluster"), str(port)],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout.strip().splitlines()[-1]
    yield dsn, str(directory / "cluster")
    subprocess.run(["bash", str(PG_SCRIPT), "stop", str(directory / "cluster")], timeout=120)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("kind", ["python", "native"])
def test_pools_ride_out_a_server_restart_and_report_an_outage(own_server, kind):
    dsn, cluster = own_server
    result = run_script("db_restart.py", kind, dsn, cluster, timeout=180)
    assert "failure" not in result, result.get("failure")
    assert result["server_restarted"] is True
    outcomes = {int(txn): outcome for txn, outcome in result["outcomes"].items()}

    # Every transaction of the stream, the one held across the restart, and the 50
    # after it committed -- the pool recovered and retried what the restart cut off --
    # except any whose connection died during COMMIT: that outcome is unknowable, so
    # it is reported as such and not retried.
    stream = [txn for txn in outcomes if txn < 450 or txn == 9999]
    assert len(stream) == 451
    unknown = [txn for txn in stream if not outcomes[txn]["ok"]]
    for txn in unknown:
        outcome = outcomes[txn]
        assert outcome["type"] == ("CommitOutcomeUnknown" if kind == "python" else "RuntimeError"), outcome
        assert "may or may not have committed" in outcome["message"], outcome
    assert len(unknown) <= 8, unknown  # at most the transactions in flight
    assert outcomes[9999]["ok"] and outcomes[9999]["attempts"] >= 2, (
        "the held transaction was not cut off and retried"
    )

    # Nothing committed twice, and what committed is the attempt that reported success.
    rows = collections.Counter(txn for txn, _ in result["rows"])
    assert max(rows.values()) == 1
    committed_attempt = dict(result["rows"])
    for txn in stream:
        if txn not in unknown:
            assert committed_attempt[txn] == outcomes[txn]["attempts"], txn

    # Down for longer than the second pool waits: clear errors, naming the server
    # without the password, nothing written; once it is back, that pool works again.
    for txn in range(1000, 1010):
        outcome = outcomes[txn]
        assert not outcome["ok"]
        assert outcome["type"] == ("OperationalError" if kind == "python" else "RuntimeError")
        assert ":***@127.0.0.1" in outcome["message"] and "hunter2" not in outcome["message"]
        assert "Connection refused" in outcome["message"]
        assert txn not in rows
    assert all(outcomes[txn]["ok"] for txn in range(2000, 2010))
    if kind == "native":
        assert result["status"]["size"] <= result["status"]["max_size"] == 4
        # The restart cut connections off and the pool reran on new ones.
        assert result["status"]["retries_connection"] >= 1, result["status"]
        assert result["status"]["connections_closed"] >= 1, result["status"]
        assert result["status"]["connections_opened"] >= result["status"]["connections_closed"]
    assert result["logged_errors"] == []
