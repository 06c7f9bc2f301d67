"""A stream of Rust transactions while the PostgreSQL server restarts.

usage: db_restart.py python|native DSN PG_DIR

400 transactions (8 at a time) each insert (txn, attempt) and hold the transaction
3 ms, and one more holds it 2 s; after 100 have finished the server is restarted (fast shutdown: sessions are
terminated mid-transaction). Then 50 more run on the recovered pool.

Then, on a second pool that gives up reconnecting after 0.3 s (its DSN carries a
password, which trust authentication ignores), the server is stopped: 10 transactions
fail; it starts again: 10 more succeed. Prints every outcome, and what the table
holds.
"""

import subprocess
import sys
from pathlib import Path

from twisted.internet import defer, threads

from _common import emit, reactor

import psycopg2

import pyo3_twisted
from pyo3_twisted.database import DatabasePool
from pyo3_twisted.probes import RustStore

kind, dsn, pg_dir = sys.argv[1:4]
SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "test-postgres.sh"
STREAM, AFTER, RESTART_AT, CONCURRENCY = 400, 50, 100, 8
# Started 20 transactions before the restart and holding 2 s: certainly inside its
# transaction when the server terminates the sessions.
LONG_TXN, LONG_AT = 9999, 80


def sql(statement):
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(statement)
        return cur.fetchall() if cur.description else None


sql("DROP TABLE IF EXISTS restart_log")
sql("CREATE TABLE restart_log (txn INTEGER NOT NULL, attempt INTEGER NOT NULL)")
started_before = sql("SELECT pg_postmaster_start_time()::text")[0][0]

pyo3_twisted.install(reactor, worker_threads=2)
if kind == "python":
    pool = DatabasePool(reactor, dsn, max_connections=4, reconnect_timeout=30.0)
    store = RustStore.python(pool, reactor)
else:
    store = RustStore.postgres(dsn, max_size=4, reconnect_timeout=30.0)

result: dict = {"kind": kind}
outcomes: dict = {}


def control(command):
    subprocess.run(["bash", str(SCRIPT), command, pg_dir], check=True, capture_output=True)


def record(txn, store=store, hold=0.003):
    def ok(attempts):
        outcomes[txn] = {"ok": True, "attempts": attempts}

    def failed(f):
        outcomes[txn] = {"ok": False, "type": type(f.value).__name__, "message": str(f.value)}

    return store.insert_attempt(reactor, txn, hold).addCallbacks(ok, failed)


async def run():
    semaphore = defer.DeferredSemaphore(CONCURRENCY)
    restart = long = None
    finished = 0

    def done(_):
        nonlocal finished, restart, long
        finished += 1
        if finished == LONG_AT:
            long = record(LONG_TXN, hold=2.0)
        if finished == RESTART_AT:
            result["finished_when_restart_began"] = finished
            restart = threads.deferToThread(control, "restart")
            restart.addCallback(lambda _: result.__setitem__("finished_when_restart_ended", finished))

    stream = [semaphore.run(record, txn).addCallback(done) for txn in range(STREAM)]
    await defer.gatherResults(stream)
    await restart
    await long
    result["in_stream"] = finished
    after = [semaphore.run(record, txn) for txn in range(STREAM, STREAM + AFTER)]
    await defer.gatherResults(after)
    result["status"] = store.status()

    # Down for longer than the second pool waits.
    secret_dsn = dsn.replace("postgres@", "postgres:hunter2@", 1)
    if kind == "python":
        short_pool = DatabasePool(reactor, secret_dsn, max_connections=2, reconnect_timeout=0.3)
        short = RustStore.python(short_pool, reactor)
    else:
        short = RustStore.postgres(secret_dsn, max_size=2, reconnect_timeout=0.3)
    await threads.deferToThread(control, "pause")
    down = [record(txn, short) for txn in range(1000, 1010)]
    await defer.gatherResults(down)
    await threads.deferToThread(control, "resume")
    back = [record(txn, short) for txn in range(2000, 2010)]
    await defer.gatherResults(back)


def start():
    d = defer.ensureDeferred(run())
    d.addErrback(lambda f: result.__setitem__("failure", f.getTraceback()))
    d.addBoth(lambda _: reactor.stop())


reactor.callWhenRunning(start)
reactor.run()
result["outcomes"] = {str(k): v for k, v in sorted(outcomes.items())}
result["rows"] = sql("SELECT txn, attempt FROM restart_log ORDER BY txn, attempt")
result["server_restarted"] = sql("SELECT pg_postmaster_start_time()::text")[0][0] != started_before
emit(result)
