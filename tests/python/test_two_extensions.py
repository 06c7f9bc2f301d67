"""Several extension modules linking pyo3-twisted on one reactor, and one Tokio pool
shared with pyo3-async-runtimes (each case in a fresh interpreter)."""

from conftest import run_script


def test_two_extension_modules_on_one_reactor_each_keep_their_own_runtime():
    result = run_script("two_extensions.py", "separate")
    assert "failure" not in result, result.get("failure")
    # Each copy of the crate stores its runtime under its own reactor attribute...
    assert result["attrs_differ"] and result["both_attrs_set"]
    # ...and runs its futures on its own threads, with its own configuration.
    assert result["shim_threads"] == ["shim-pool"]
    assert result["ext_threads"] == ["ext-pool"]
    assert result["live"] == {"shim-pool": 1, "ext-pool": 2}
    # They call each other through the reactor: no type errors between copies.
    assert result["ext_awaits_shim"] == "shim value"
    assert result["shim_awaits_ext"] == "ext-pool"
    # Both stop with the reactor (threads counted by Tokio's thread-stop hook: /proc
    # may still list a thread that is exiting).
    for stats in (result["shim_stats"], result["ext_stats"]):
        assert stats["state"] == "stopped"
        assert stats["tokio_threads_live"] == 0
        assert stats["tasks_in_flight"] == 0
        assert stats["tasks_completed"] == stats["tasks_spawned"] == 22
    assert result["logged_errors"] == []


def test_pyo3_async_runtimes_futures_run_on_the_same_pool():
    result = run_script("two_extensions.py", "shared")
    assert "failure" not in result, result.get("failure")
    assert result["shared_with_pyo3_async_runtimes"] is True
    # create_deferred futures and future_into_py futures ran on the same threads...
    assert result["deferred_threads"] == ["shared-pool"]
    assert result["future_threads"] == ["shared-pool"]
    # ...and pyo3-async-runtimes never built its default pool.
    assert result["live_default_pool"] == 0
    assert result["live_shared"] >= 2
    assert "already built with worker_threads=2" in result["mismatch_error"]
    stats = result["ext_stats"]
    assert stats["state"] == "stopped"
    assert stats["tasks_in_flight"] == 0
    assert stats["tasks_completed"] == 40
    # The process-wide pool outlives the reactor (documented): its workers are still
    # there after the reactor stopped (idle blocking threads may come and go).
    assert result["after_stop_shared"] >= 2
    assert result["logged_errors"] == []
