"""The bridge under load on a real reactor (epoll, or asyncio with PYO3_TWISTED_TEST_REACTOR), each case in a fresh interpreter."""

from conftest import run_script


def test_shutdown_with_10000_in_flight_futures():
    timeout = 1.0
    result = run_script("shutdown_many.py", str(timeout))
    assert result["logged_errors"] == []
    assert result["other_failures"] == []
    # Every Deferred fired: the quick half with values, the rest with RuntimeShutdown.
    assert result["values"] == 5000
    assert result["shutdown_failures"] == result["expected_total"] - 5000
    # The reactor waited for the timeout, not for the hour-long sleeps.
    assert timeout <= result["shutdown_seconds"] < timeout + 2.0, result["shutdown_seconds"]
    stats = result["stats"]
    assert stats["state"] == "stopped"
    assert stats["tokio_threads_live"] == 0
    assert stats["tasks_in_flight"] == 0
    assert stats["tasks_aborted_at_shutdown"] == result["shutdown_failures"]


def test_10000_completions_are_batched_into_few_wakeups():
    result = run_script("batching.py")
    stats = result["stats"]
    assert result["logged_errors"] == []
    assert result["completions"] == 10_000
    assert stats["tasks_completed"] == 10_000
    assert stats["wake_mode"] == "fd"
    # At most one wake per batch: far fewer wake-ups than completions.
    assert stats["mailbox_wakeups"] <= 10_000 // 20, stats
    assert stats["mailbox_max_batch"] >= 100, stats
    # No Tokio worker took the GIL to deliver a result.
    assert stats["gil_acquisitions_on_tokio_threads"] == 0


def test_cancel_racing_completion_fires_each_deferred_once():
    n = 3000
    result = run_script("cancel_race.py", str(n))
    assert result["logged_errors"] == []  # no AlreadyCalledError, no unhandled errors
    assert result["other"] == []
    assert result["fired_twice"] == 0
    assert result["value"] + result["cancelled"] == n
    # The race went both ways, so both paths were exercised.
    assert result["value"] > 0 and result["cancelled"] > 0, result
    stats = result["stats"]
    assert stats["tasks_in_flight"] == 0
    assert stats["tasks_completed"] == result["value"]


def test_soak_memory_and_objects_return_to_their_level():
    deferreds, awaitables = 1_000_000, 200_000
    result = run_script("soak.py", str(deferreds), str(awaitables), timeout=300)
    stats = result["stats"]
    assert result["logged_errors"] == []
    assert result["rss_growth_mb"] < 5, result["rss_growth_mb"]
    assert abs(result["objects_delta"]) < 1000, result["objects_delta"]
    assert stats["tasks_in_flight"] == 0
    # Warm-up included: a tenth more of each.
    assert stats["tasks_completed"] == deferreds * 11 // 10 + awaitables * 11 // 10 // 10_000
    assert stats["awaitables_completed"] == stats["awaitables_started"] == awaitables * 11 // 10
    assert stats["gil_acquisitions_on_tokio_threads"] == 0


def test_the_reactor_stops_lingering_for_answers_that_come_later_and_takes_it_up_again():
    result = run_script("lingers.py")
    assert result["logged_errors"] == []
    slow, quick = result["slow"], result["quick"]
    assert slow["tasks_completed"] == quick["tasks_completed"] == 64
    if result["wake_mode"] != "fd":
        # No reactor-side linger without an fd to wake the reactor.
        assert slow["mailbox_lingers"] == quick["mailbox_lingers"] == 0
        return
    # Every hand-off is a chance to linger. A 20 ms answer never comes within the
    # 50 µs linger: after the first few misses only one chance in 16 lingers.
    assert slow["mailbox_lingers"] + slow["mailbox_lingers_skipped"] == 64, slow
    assert slow["mailbox_lingers"] <= 9 + 64 // 16 + 1, slow
    # Answers at once: the first probe catches its answer and lingering resumes; a
    # linger that catches answers goes on catching the next ones (one linger may
    # serve them all, its count bumped only when it ends), so the sign is that
    # answers stop needing a wake-up of the reactor: only the skipped chances do.
    assert quick["mailbox_lingers_skipped"] <= 16, quick
    assert quick["mailbox_wakeups"] <= quick["mailbox_lingers_skipped"] + 4, quick
    # Whereas a 20 ms answer woke the reactor every time.
    assert slow["mailbox_wakeups"] >= 64 - 4, slow
