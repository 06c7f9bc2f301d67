"""run_python_awaitable on Twisted's asyncio reactor, where a factory may also return
asyncio coroutines, futures and Tasks (each case in a fresh interpreter)."""

import pytest

from conftest import run_script


@pytest.mark.parametrize("mode", ["plain", "logcontext"])
def test_asyncio_coroutines_futures_and_tasks(mode):
    result = run_script("asyncio_awaitables.py", mode)
    assert "failure" not in result, result.get("failure")
    assert result["reactor_class"] == "AsyncioSelectorReactor"
    # One coroutine awaiting asyncio.sleep, a Deferred, sleep(0) and a future.
    assert result["mixed"] == {"ok": ["deferred", "future", True]}
    assert result["future"] == {"ok": "a future"}
    # A Task runs asyncio code that needs a current task (asyncio.timeout).
    assert result["task"] == {"ok": True}
    assert result["error"]["error"] == "KeyError"
    assert "raised after an asyncio await" in result["error"]["message"]
    # Dropping the Rust future: the Python side sees the cancellation.
    assert result["cancelled"]["error"] == "CancelledError"
    assert result["coroutine_saw"] == ["CancelledError"]
    assert result["task_cancelled"] is True
    assert result["many_sum"] == sum(range(1000))
    stats = result["stats"]
    assert stats["tasks_in_flight"] == 0
    assert stats["awaitables_started"] == stats["awaitables_completed"]
    assert stats["gil_acquisitions_on_tokio_threads"] == 0
    assert result["logged_errors"] == []
    if mode == "logcontext":
        assert_logcontext_kept(result)


def assert_logcontext_kept(result):
    assert result["contexts_result"] == {"ok": "recorded"}
    # The coroutine resumes in its request's context after every kind of await,
    # while the reactor runs other work in the sentinel meanwhile.
    assert result["contexts"] == {
        "start": "req-asyncio",
        "reactor_meanwhile": "sentinel",
        "after_sleep": "req-asyncio",
        "after_future": "req-asyncio",
        "after_deferred": "req-asyncio",
    }
    assert result["context_after_await"] == "req-asyncio"
    assert result["context_at_end"] == "sentinel"
