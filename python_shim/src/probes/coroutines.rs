//! Probes for `create_coroutine`: Rust futures awaited as Python coroutines.

use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3_twisted::{create_coroutine, run_python_awaitable};

use super::awaitables::burn;
use super::futures::{drop_flag, seconds_to_duration, DropFlag};

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("").to_owned()
}

/// `await factory()` on the reactor (through `run_python_awaitable`); evaluates to
/// its result.
#[pyfunction]
fn co_call_python<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    factory: Py<PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let handle = reactor.clone().unbind();
    create_coroutine(py, reactor, async move {
        run_python_awaitable(handle, move |py| factory.bind(py).call0()).await
    })
}

/// `await factory()` (through `run_python_awaitable`), then `polls` more polls of
/// nothing (each a Tokio `yield_now`); `(coroutine, flag)`, the flag set when the
/// future is dropped. Evaluates to the awaitable's result, or raises its error.
#[pyfunction]
#[pyo3(signature = (reactor, factory, polls=0))]
fn co_await_python<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    factory: Py<PyAny>,
    polls: u32,
) -> PyResult<(Bound<'py, PyAny>, DropFlag)> {
    let handle = reactor.clone().unbind();
    let (flag, guard) = drop_flag();
    let coroutine = create_coroutine(py, reactor, async move {
        let _guard = guard;
        let answer = run_python_awaitable(handle, move |py| factory.bind(py).call0()).await?;
        for _ in 0..polls {
            tokio::task::yield_now().await;
        }
        Ok(answer)
    })?;
    Ok((coroutine, flag))
}

/// The thread names where it was polled: at its start, after awaiting `factory()`,
/// and after a 1 ms Tokio sleep (Tokio wakes it).
#[pyfunction]
fn co_where_polled<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    factory: Py<PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let handle = reactor.clone().unbind();
    create_coroutine(py, reactor, async move {
        let start = thread_name();
        run_python_awaitable(handle, move |py| factory.bind(py).call0()).await?;
        let answered = thread_name();
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(vec![start, answered, thread_name()])
    })
}

/// Raises `ValueError(message)`, or panics with it.
#[pyfunction]
fn co_fail<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    message: String,
    panic: bool,
) -> PyResult<Bound<'py, PyAny>> {
    create_coroutine(py, reactor, async move {
        tokio::task::yield_now().await;
        if panic {
            panic!("{message}");
        }
        Err::<(), _>(PyValueError::new_err(message))
    })
}

/// Never finishes; `(coroutine, flag)`, the flag set when the future is dropped.
#[pyfunction]
fn co_pending<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, DropFlag)> {
    let (flag, guard) = drop_flag();
    let coroutine = create_coroutine(py, reactor, async move {
        let _guard = guard;
        std::future::pending::<()>().await;
        Ok(())
    })?;
    Ok((coroutine, flag))
}

/// Races `factory()` against a Tokio sleep of `seconds`: `"python"` or `"timer"`,
/// whichever finishes first (the other is dropped). With `unordered`, the two race
/// inside a `FuturesUnordered`, which polls each with a waker of its own.
#[pyfunction]
#[pyo3(signature = (reactor, factory, seconds, unordered=false))]
fn co_race<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    factory: Py<PyAny>,
    seconds: f64,
    unordered: bool,
) -> PyResult<Bound<'py, PyAny>> {
    use futures_util::future::{BoxFuture, FutureExt};
    use futures_util::stream::{FuturesUnordered, StreamExt};

    let handle = reactor.clone().unbind();
    let timeout = seconds_to_duration(seconds)?;
    create_coroutine(py, reactor, async move {
        let call: BoxFuture<'static, PyResult<&'static str>> =
            run_python_awaitable(handle, move |py| factory.bind(py).call0())
                .map(|answer| answer.map(|_| "python"))
                .boxed();
        let timer: BoxFuture<'static, PyResult<&'static str>> =
            tokio::time::sleep(timeout).map(|()| Ok("timer")).boxed();
        if unordered {
            let mut both: FuturesUnordered<_> = [call, timer].into_iter().collect();
            both.next().await.unwrap_or(Ok("neither"))
        } else {
            futures_util::future::select(call, timer)
                .await
                .factor_first()
                .0
        }
    })
}

/// Calls `f1()` and `f2()` (awaitables) side by side; evaluates to both results.
#[pyfunction]
fn co_join<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    f1: Py<PyAny>,
    f2: Py<PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let (h1, h2) = (reactor.clone().unbind(), reactor.clone().unbind());
    create_coroutine(py, reactor, async move {
        let (a, b) = futures_util::future::join(
            run_python_awaitable(h1, move |py| f1.bind(py).call0()),
            run_python_awaitable(h2, move |py| f2.bind(py).call0()),
        )
        .await;
        Ok((a?, b?))
    })
}

/// Awaits `factory()`, then burns `seconds` of CPU time in that poll, logs
/// `message` (target `pyo3_twisted::probes`), and evaluates to the CPU seconds
/// measured.
#[pyfunction]
fn co_burn_after<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    factory: Py<PyAny>,
    seconds: f64,
    message: String,
) -> PyResult<Bound<'py, PyAny>> {
    let handle = reactor.clone().unbind();
    create_coroutine(py, reactor, async move {
        run_python_awaitable(handle, move |py| factory.bind(py).call0()).await?;
        let spent = burn(seconds);
        log::info!(target: "pyo3_twisted::probes", "{message}");
        Ok(spent)
    })
}

/// The thread a `spawn`ed child runs on, and the sum of `a` and `b` it computes.
#[pyfunction]
fn co_spawn_child<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    a: i64,
    b: i64,
) -> PyResult<Bound<'py, PyAny>> {
    create_coroutine(py, reactor, async move {
        pyo3_twisted::spawn(async move { (thread_name(), a + b) })
            .await
            .map_err(|e| PyValueError::new_err(e.to_string()))
    })
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(co_call_python, m)?)?;
    m.add_function(wrap_pyfunction!(co_await_python, m)?)?;
    m.add_function(wrap_pyfunction!(co_where_polled, m)?)?;
    m.add_function(wrap_pyfunction!(co_fail, m)?)?;
    m.add_function(wrap_pyfunction!(co_pending, m)?)?;
    m.add_function(wrap_pyfunction!(co_race, m)?)?;
    m.add_function(wrap_pyfunction!(co_join, m)?)?;
    m.add_function(wrap_pyfunction!(co_burn_after, m)?)?;
    m.add_function(wrap_pyfunction!(co_spawn_child, m)?)?;
    Ok(())
}
