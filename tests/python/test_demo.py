"""The demo service end to end: a subprocess, real HTTP, the access log, SIGTERM."""

import http.client
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from pyo3_twisted.testing import REACTOR_ENV

ACCESS = re.compile(
    r'"(?P<method>\w+) (?P<uri>\S+)" (?P<status>\d+) (?P<size>\d+)B \S+sec '
    r"ru=\((?P<utime>[\d.]+), (?P<stime>[\d.]+)\) db=\((?P<sched>[\d.]+)/(?P<txn>[\d.]+)/(?P<count>\d+)\)"
)


class Demo:
    def __init__(self, database, *extra):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyo3_twisted_demo", "--port", "0", "--database", database,
             "--reactor", "asyncio" if os.environ.get(REACTOR_ENV) == "asyncio" else "default", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "RUST_BACKTRACE": "0"},
        )
        self.stderr_lines = []
        self._stderr = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr.start()
        line = self.proc.stdout.readline()  # blocks until ready (or exit)
        match = re.match(r"listening on http://([\d.]+):(\d+)", line)
        assert match, f"demo did not start: {line!r}\n" + "".join(self.stderr_lines)
        self.host, self.port = match.group(1), int(match.group(2))

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def request(self, method, path, body=None, timeout=30):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body)
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            conn.close()

    def access_lines(self):
        return [m.groupdict() for line in list(self.stderr_lines) if (m := ACCESS.search(line))]

    def stop(self, sig=signal.SIGTERM, timeout=30, signal_first=True):
        if signal_first and self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._stderr.join(5)
        return code


def fresh_pg_database(dsn):
    """The test database without the demo's table: the demo creates and seeds it."""
    import psycopg2

    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS feature_flags")
    conn.close()
    return dsn


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "demo.sqlite3")
    return fresh_pg_database(request.getfixturevalue("pg_dsn"))


def test_versions_put_and_the_access_log(database):
    demo = Demo(database, "--rust-work-ms", "30")
    try:
        status, body = demo.request("GET", "/versions?user_id=@alice:example.org")
        assert status == 200
        assert "v1.11" in body["versions"]
        assert body["unstable_features"] == {
            "dark_mode": True,
            "msc3026.busy_presence": False,
            "msc3881": True,
            "msc4140.delayed_events": False,
        }
        # A Python write is visible to the Rust read (one pool for both).
        assert demo.request("PUT", "/features/@alice:example.org/dark_mode", b'{"enabled": false}') == (200, {})
        status, body = demo.request("GET", "/versions?user_id=%40alice%3Aexample.org")
        assert body["unstable_features"]["dark_mode"] is False
    finally:
        assert demo.stop() == 0
    gets = [line for line in demo.access_lines() if line["method"] == "GET" and line["status"] == "200"]
    assert len(gets) == 2, demo.stderr_lines
    for line in gets:
        # The Rust transaction is on the request's bill...
        assert int(line["count"]) >= 1
        # ...and so is the Rust handler's CPU time (30 ms of thread CPU per request;
        # getrusage splits it between user and system time in clock ticks).
        assert float(line["utime"]) + float(line["stime"]) >= 0.024, line
    puts = [line for line in demo.access_lines() if line["method"] == "PUT"]
    assert puts and int(puts[0]["count"]) == 1
    assert any("shut down cleanly" in line for line in demo.stderr_lines)
    reactor = "AsyncioSelectorReactor" if os.environ.get(REACTOR_ENV) == "asyncio" else "EPollReactor"
    assert any(f"reactor: {reactor}" in line for line in demo.stderr_lines), demo.stderr_lines


MODES = {"tokio_polls": [], "reactor_polls": ["--reactor-polls"], "coroutine": ["--rust-coroutine"]}


@pytest.mark.parametrize("mode", list(MODES))
def test_the_python_twin_of_versions_answers_the_same(database, mode):
    polls = mode == "reactor_polls"
    demo = Demo(database, *MODES[mode])
    try:
        for user in ["@alice:example.org", "@bob:example.org", "@nobody:example.org"]:
            rust = demo.request("GET", f"/versions?user_id={user}")
            python = demo.request("GET", f"/versions_py?user_id={user}")
            assert rust[0] == 200
            assert rust == python
        assert demo.request("POST", "/versions_py")[0] == 405
    finally:
        assert demo.stop() == 0
    assert any(f"reactor_polls: {polls}" in line for line in demo.stderr_lines), demo.stderr_lines
    handler = "coroutine" if mode == "coroutine" else "Deferred"
    assert any(f"Rust handler: {handler}" in line for line in demo.stderr_lines), demo.stderr_lines


@pytest.mark.parametrize("mode", list(MODES))
def test_the_rust_handler_on_the_native_pool_reads_what_python_wrote(pg_dsn, mode):
    database = fresh_pg_database(pg_dsn)
    demo = Demo(database, "--native-pool", *MODES[mode])
    try:
        for user in ["@alice:example.org", "@bob:example.org", "@nobody:example.org"]:
            rust = demo.request("GET", f"/versions?user_id={user}")
            assert rust[0] == 200
            assert rust == demo.request("GET", f"/versions_py?user_id={user}")
        # Written through the Python pool, read through the native one.
        before = demo.request("GET", "/versions?user_id=@bob:example.org")[1]["unstable_features"]["dark_mode"]
        body = json.dumps({"enabled": not before}).encode()
        assert demo.request("PUT", "/features/@bob:example.org/dark_mode", body) == (200, {})
        after = demo.request("GET", "/versions?user_id=@bob:example.org")[1]["unstable_features"]["dark_mode"]
        assert after is (not before)
    finally:
        assert demo.stop() == 0
    assert any("its pool: native" in line for line in demo.stderr_lines), demo.stderr_lines


@pytest.mark.parametrize("mode", ["tokio_polls", "coroutine"])
def test_extra_features_are_answered_alike_by_both_handlers(tmp_path, mode):
    demo = Demo(str(tmp_path / "demo.sqlite3"), "--extra-features", "3", *MODES[mode])
    try:
        extra = ["org.example.feature_000", "org.example.feature_001", "org.example.feature_002"]
        body = json.dumps({"enabled": True}).encode()
        assert demo.request("PUT", f"/features/@bob:example.org/{extra[1]}", body) == (200, {})
        # Not a known feature: one past the three.
        assert demo.request("PUT", "/features/@bob:example.org/org.example.feature_003", body)[0] == 404
        rust = demo.request("GET", "/versions?user_id=@bob:example.org")
        assert rust == demo.request("GET", "/versions_py?user_id=@bob:example.org")
        features = rust[1]["unstable_features"]
        assert list(features) == sorted(features) and len(features) == 7
        assert [features[name] for name in extra] == [False, True, False]
    finally:
        assert demo.stop() == 0


def test_extra_features_must_not_be_negative(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pyo3_twisted_demo", "--port", "0", "--extra-features", "-1",
         "--database", str(tmp_path / "demo.sqlite3")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "--extra-features must be 0 or more" in proc.stderr


def test_the_native_pool_needs_postgresql(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pyo3_twisted_demo", "--port", "0", "--native-pool",
         "--database", str(tmp_path / "demo.sqlite3")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "--native-pool needs --database postgresql://" in proc.stderr


def test_metrics_show_the_figures_of_one_request(tmp_path):
    demo = Demo(str(tmp_path / "demo.sqlite3"))
    try:
        status, _ = demo.request("GET", "/versions?user_id=@alice:example.org")
        assert status == 200
        conn = http.client.HTTPConnection(demo.host, demo.port, timeout=30)
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type").startswith("text/plain")
        text = response.read().decode()
        conn.close()
    finally:
        assert demo.stop() == 0
    from prometheus_client.parser import text_string_to_metric_families

    figures = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    main = (("reactor", "main"),)
    # One request: one Rust task, completed, timed once.
    assert figures[("pyo3_twisted_tasks_spawned_total", main)] == 1
    assert figures[("pyo3_twisted_tasks_completed_total", main)] == 1
    assert figures[("pyo3_twisted_task_run_seconds_count", (("outcome", "completed"), *main))] == 1
    assert figures[("pyo3_twisted_tasks_in_flight", main)] == 0
    # Its transaction went through the Python pool: one awaitable from Rust.
    assert figures[("pyo3_twisted_awaitables_started_total", main)] == 1


def test_bad_requests_get_4xx_and_change_nothing(tmp_path):
    path = str(tmp_path / "demo.sqlite3")
    demo = Demo(path)
    try:
        before = demo.request("GET", "/versions?user_id=@alice:example.org")[1]
        cases = [
            (("GET", "/nowhere"), 404, "M_UNRECOGNIZED"),
            (("DELETE", "/versions"), 405, "M_UNRECOGNIZED"),
            (("GET", "/versions"), 400, "M_MISSING_PARAM"),
            (("GET", "/versions?user_id="), 400, "M_MISSING_PARAM"),
            (("PUT", "/features/@alice:example.org/dark_mode", b"{not json"), 400, "M_NOT_JSON"),
            (("PUT", "/features/@alice:example.org/dark_mode", b'{"enabled": "yes"}'), 400, "M_BAD_JSON"),
            (("PUT", "/features/@alice:example.org/teleport", b'{"enabled": true}'), 404, "M_NOT_FOUND"),
            (("PUT", "/features/@alice:example.org/dark_mode", b"x" * 70000), 413, "M_TOO_LARGE"),
        ]
        for args, status, errcode in cases:
            got_status, body = demo.request(*args)
            assert (got_status, body.get("errcode")) == (status, errcode), (args[:2], got_status, body)
            assert isinstance(body.get("error"), str)
        # SQL-injection-shaped user ids are ordinary, unknown users.
        status, body = demo.request("GET", "/versions?user_id=x%27%20OR%20%271%27%3D%271")
        assert status == 200 and not any(body["unstable_features"].values())
        status, _ = demo.request("PUT", "/features/x%27%20OR%20%271%27%3D%271/msc3881", b'{"enabled": true}')
        assert status == 200
        assert demo.request("GET", "/versions?user_id=@alice:example.org")[1] == before
    finally:
        assert demo.stop() == 0
    rows = sqlite3.connect(path).execute("SELECT user_id, feature, enabled FROM feature_flags ORDER BY 1, 2").fetchall()
    assert rows == [
        ("@alice:example.org", "dark_mode", 1),
        ("@alice:example.org", "msc3881", 1),
        ("@bob:example.org", "msc4140.delayed_events", 1),
        ("x' OR '1'='1", "msc3881", 1),
    ]


def test_sigterm_during_200_concurrent_requests(tmp_path):
    demo = Demo(str(tmp_path / "demo.sqlite3"), "--rust-work-ms", "20", "--shutdown-timeout", "10")
    outcomes = []
    lock = threading.Lock()
    answered = threading.Semaphore(0)

    def client():
        try:
            status, _ = demo.request("GET", "/versions?user_id=@alice:example.org", timeout=60)
            outcome = f"status {status}"
            answered.release()
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            outcome = f"closed ({type(e).__name__})"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=client) for _ in range(200)]
    for t in threads:
        t.start()
    # Signal once the service is demonstrably busy answering.
    for _ in range(10):
        assert answered.acquire(timeout=30)
    started = time.monotonic()
    demo.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    # One SIGTERM only: a second one during shutdown may meet Twisted's restored
    # default handler (Twisted 24.11) and kill the process.
    code = demo.stop(signal_first=False)
    elapsed = time.monotonic() - started
    assert not any(t.is_alive() for t in threads), "a request hung"
    assert code == 0
    assert elapsed < 10 + 5
    assert len(outcomes) == 200
    # Every request was answered (200, or 503 if it came in during shutdown) or its
    # connection was closed; none hung.
    assert all(o in ("status 200", "status 503") or o.startswith("closed") for o in outcomes), set(outcomes)
    assert outcomes.count("status 200") >= 10


def test_hello_example_runs_on_the_demo_module():
    """examples/hello_twisted.py (`make example`), on a real reactor, end to end."""
    example = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "hello_twisted.py")
    done = subprocess.run(
        [sys.executable, example], capture_output=True, text=True, timeout=60, env={**os.environ, "RUST_BACKTRACE": "0"}
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(r'hello Twisted, from Tokio thread "pyo3-twisted[^"]*"', lines[0]), lines
    assert lines[1] == f"24 spawned Rust children added up to {sum(i * i for i in range(1, 25))}"
    assert lines[2].startswith("a Rust error arrived as ValueError(not a port number: \"eighty\"")
    assert lines[3].startswith("a Rust panic arrived as RustPanicError(attempt to divide by zero")
    assert lines[4] == "1000 concurrent futures came back in order: True"
    runtime = re.fullmatch(r"runtime: (\d+) tasks, (\d+) results delivered in \d+ batches .*", lines[5])
    assert runtime and int(runtime.group(1)) == 1004, lines[5]  # children are not bridged tasks
    assert len(lines) == 6, lines
