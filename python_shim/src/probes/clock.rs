//! Probes for `pyo3_twisted::time`: timers on the runtime's clock (the reactor's on
//! memory reactors), driven from Python tests and the benchmark.

use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3_twisted::create_deferred;
use pyo3_twisted::time;

use super::futures::seconds_to_duration;

/// Sleeps `seconds` on the runtime's clock; fires with `reactor.seconds()` as the
/// task saw it on waking.
#[pyfunction]
fn clock_sleep<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    seconds: f64,
) -> PyResult<Bound<'py, PyAny>> {
    let duration = seconds_to_duration(seconds)?;
    create_deferred(py, reactor, async move {
        time::sleep(duration).await?;
        Ok(time::reactor_seconds()?)
    })
}

/// `time::timeout(seconds, never)`: fails with `TimeoutError` when the clock passes.
#[pyfunction]
fn clock_timeout_never<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    seconds: f64,
) -> PyResult<Bound<'py, PyAny>> {
    let duration = seconds_to_duration(seconds)?;
    create_deferred(py, reactor, async move {
        time::timeout(duration, std::future::pending::<()>()).await?;
        Ok(())
    })
}

/// `time::timeout(seconds, sleep(inner))`: fires with `"inner"` when the inner
/// sleep wins.
#[pyfunction]
fn clock_timeout_sleep<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    seconds: f64,
    inner: f64,
) -> PyResult<Bound<'py, PyAny>> {
    let (duration, inner) = (seconds_to_duration(seconds)?, seconds_to_duration(inner)?);
    create_deferred(py, reactor, async move {
        time::timeout(duration, time::sleep(inner)).await??;
        Ok("inner")
    })
}

/// `n` ticks of `time::interval(period)`: fires with each tick's instant, in
/// seconds of the clock.
#[pyfunction]
fn clock_interval<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    period: f64,
    n: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let period = seconds_to_duration(period)?;
    create_deferred(py, reactor, async move {
        let mut interval = time::interval(period);
        let mut ticks = Vec::with_capacity(n);
        for _ in 0..n {
            ticks.push(interval.tick().await?.since_zero().as_secs_f64());
        }
        Ok(ticks)
    })
}

/// `n` sleeps of `millis` in a row, on the runtime's clock (`crate_clock`) or
/// `tokio::time::sleep`: fires with each sleep's overshoot past its duration, in
/// microseconds of real time. The benchmark's accuracy figure.
#[pyfunction]
fn sleep_overshoots<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    n: usize,
    millis: u64,
    crate_clock: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let duration = Duration::from_millis(millis);
    create_deferred(py, reactor, async move {
        let mut overshoots = Vec::with_capacity(n);
        for _ in 0..n {
            let start = Instant::now();
            if crate_clock {
                time::sleep(duration).await?;
            } else {
                tokio::time::sleep(duration).await;
            }
            let over = start.elapsed().saturating_sub(duration);
            overshoots.push(over.as_secs_f64() * 1e6);
        }
        Ok(overshoots)
    })
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(clock_sleep, m)?)?;
    m.add_function(wrap_pyfunction!(clock_timeout_never, m)?)?;
    m.add_function(wrap_pyfunction!(clock_timeout_sleep, m)?)?;
    m.add_function(wrap_pyfunction!(clock_interval, m)?)?;
    m.add_function(wrap_pyfunction!(sleep_overshoots, m)?)?;
    Ok(())
}
