//! Probes for `run_python_awaitable`, logcontexts, Rust CPU time and Rust logging.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3_twisted::{create_deferred, run_python_awaitable, ReactorHandle};
use tokio::sync::watch;

/// Awaits `factory()` on the reactor (through `run_python_awaitable`) and fires with
/// its result.
#[pyfunction]
fn call_python<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    factory: Py<PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let handle = reactor.clone().unbind();
    create_deferred(py, reactor, async move {
        run_python_awaitable(handle, move |py| factory.bind(py).call0()).await
    })
}

/// Where the future was polled: the thread's name at its start, after awaiting
/// `factory()` (the reactor answers), and after a 1 ms Tokio sleep (Tokio wakes it).
#[pyfunction]
fn where_polled<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    factory: Py<PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let handle = reactor.clone().unbind();
    let name = || std::thread::current().name().unwrap_or("").to_owned();
    create_deferred(py, reactor, async move {
        let start = name();
        run_python_awaitable(handle, move |py| factory.bind(py).call0()).await?;
        let answered = name();
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(vec![start, answered, name()])
    })
}

/// Three calls into Python: `f1` directly, `f2` from a `spawn`ed child, and `f3` from
/// a detached child once `gate.open()` is called (after the request finished, in the
/// tests). Fires with `[f1(), f2()]`; `f3`'s outcome goes nowhere.
#[pyfunction]
fn three_calls<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    f1: Py<PyAny>,
    f2: Py<PyAny>,
    f3: Py<PyAny>,
) -> PyResult<(Bound<'py, PyAny>, Gate)> {
    let (open, mut opened) = watch::channel(false);
    let d = create_deferred(py, reactor, async move {
        let handle = ReactorHandle::current().expect("inside a bridged task");
        let first = handle
            .run_python_awaitable(move |py| f1.bind(py).call0())
            .await?;
        let second = pyo3_twisted::spawn(async move {
            let handle = ReactorHandle::current().expect("inside a spawned child");
            handle
                .run_python_awaitable(move |py| f2.bind(py).call0())
                .await
        })
        .await
        .map_err(|e| PyValueError::new_err(e.to_string()))??;
        pyo3_twisted::spawn(async move {
            if opened.wait_for(|open| *open).await.is_ok() {
                let handle = ReactorHandle::current().expect("inside a spawned child");
                let _ = handle
                    .run_python_awaitable(move |py| f3.bind(py).call0())
                    .await;
            }
        });
        Ok(vec![first, second])
    })?;
    Ok((d, Gate { open }))
}

/// Opens once; lets a waiting Rust task go on.
#[pyclass(frozen, module = "pyo3_twisted.probes")]
struct Gate {
    open: watch::Sender<bool>,
}

#[pymethods]
impl Gate {
    fn open(&self) {
        self.open.send_replace(true);
    }
}

/// Burns `seconds` of this worker's CPU time in one poll, then fires with the CPU
/// seconds it measured.
#[pyfunction]
fn burn_cpu<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    seconds: f64,
) -> PyResult<Bound<'py, PyAny>> {
    create_deferred(py, reactor, async move { Ok(burn(seconds)) })
}

/// Awaits `factory()` (a Python awaitable), then burns `seconds` of CPU time in the
/// poll its answer runs (on the reactor thread with `reactor_polls`); fires with the
/// CPU seconds it measured.
#[pyfunction]
fn burn_cpu_after<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    factory: Py<PyAny>,
    seconds: f64,
) -> PyResult<Bound<'py, PyAny>> {
    let handle = reactor.clone().unbind();
    create_deferred(py, reactor, async move {
        run_python_awaitable(handle, move |py| factory.bind(py).call0()).await?;
        Ok(burn(seconds))
    })
}

/// `times` rounds of: await `factory()` and, in the same polls, burn `seconds` of CPU
/// time once it waits (the first round inside `create_deferred`'s first poll, the
/// next ones in the poll the previous answer runs, with `reactor_polls`); fires with
/// the CPU seconds measured in all.
#[pyfunction]
fn burn_cpu_beside<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    factory: Py<PyAny>,
    seconds: f64,
    times: u32,
) -> PyResult<Bound<'py, PyAny>> {
    let factory = Arc::new(factory);
    create_deferred(py, reactor, async move {
        let mut burned = 0.0;
        for _ in 0..times {
            burned += beside(&factory, || burn(seconds)).await?;
        }
        Ok(burned)
    })
}

/// Awaits `factory()` and, in the same polls, runs `work` once it waits (joined
/// with it); what `work` returned.
async fn beside(factory: &Arc<Py<PyAny>>, work: impl FnOnce() -> f64) -> PyResult<f64> {
    let handle = ReactorHandle::current().expect("inside a bridged task");
    let factory = Arc::clone(factory);
    let call = handle.run_python_awaitable(move |py| factory.bind(py).call0());
    let (answer, done) = futures_util::future::join(call, async { work() }).await;
    answer?;
    Ok(done)
}

/// Awaits `factory()` and, in the same poll, once it waits, blocks the thread for
/// `seconds` without using CPU (a thread preempted by a busy machine, as far as the
/// CPU meter can tell); fires with the seconds slept.
#[pyfunction]
fn sleep_beside<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    factory: Py<PyAny>,
    seconds: f64,
) -> PyResult<Bound<'py, PyAny>> {
    let factory = Arc::new(factory);
    create_deferred(py, reactor, async move {
        beside(&factory, || {
            let started = std::time::Instant::now();
            std::thread::sleep(std::time::Duration::from_secs_f64(seconds));
            started.elapsed().as_secs_f64()
        })
        .await
    })
}

/// Spends `seconds` of this thread's CPU time; returns the CPU seconds measured.
pub(super) fn burn(seconds: f64) -> f64 {
    let start = thread_cpu_seconds();
    let mut spins = 0_u64;
    // Reading the clock is a system call: spin in user code between readings.
    while thread_cpu_seconds() - start < seconds {
        for _ in 0..100_000 {
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
    }
    thread_cpu_seconds() - start
}

fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: fills the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Logs each message with `log::info!` (target `pyo3_twisted::probes`) from the
/// task, then one more from a `spawn`ed child; fires with the number logged.
#[pyfunction]
fn log_messages<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    messages: Vec<String>,
) -> PyResult<Bound<'py, PyAny>> {
    create_deferred(py, reactor, async move {
        for message in &messages {
            log::info!(target: "pyo3_twisted::probes", "{message}");
        }
        pyo3_twisted::spawn(async {
            log::info!(target: "pyo3_twisted::probes", "from a child task");
        })
        .await
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(messages.len() + 1)
    })
}

/// `n` concurrent children each await `factory(i)` and convert its result to an
/// integer on the reactor; fires with their sum.
#[pyfunction]
fn call_python_many<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    n: usize,
    factory: Py<PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let factory = Arc::new(factory);
    create_deferred(py, reactor, async move {
        let handle = ReactorHandle::current().expect("inside a bridged task");
        let children: Vec<_> = (0..n)
            .map(|i| {
                let handle = handle.clone();
                let factory = Arc::clone(&factory);
                pyo3_twisted::spawn(async move {
                    handle
                        .run_python_awaitable_map(
                            move |py| factory.bind(py).call1((i,)),
                            |value| value.extract::<i64>(),
                        )
                        .await
                })
            })
            .collect();
        let mut sum = 0_i64;
        for child in children {
            sum += child
                .await
                .map_err(|e| PyValueError::new_err(e.to_string()))??;
        }
        Ok(sum)
    })
}

/// One Rust future awaiting `factory(i)` for i in 0..n, one after the other (the
/// sequential round trip of `run_python_awaitable`); fires with the sum.
#[pyfunction]
fn call_python_sequentially<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    n: usize,
    factory: Py<PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let factory = Arc::new(factory);
    create_deferred(py, reactor, async move {
        let handle = ReactorHandle::current().expect("inside a bridged task");
        let mut sum = 0_i64;
        for i in 0..n {
            let factory = Arc::clone(&factory);
            sum += handle
                .run_python_awaitable_map(
                    move |py| factory.bind(py).call1((i,)),
                    |v| v.extract::<i64>(),
                )
                .await?;
        }
        Ok(sum)
    })
}

/// A future that yields to Tokio `n` times (so is polled n + 1 times), then fires
/// with n: the per-poll cost of the bridge's wrappers (CPU metering among them).
#[pyfunction]
fn yield_many<'py>(
    py: Python<'py>,
    reactor: &Bound<'py, PyAny>,
    n: usize,
) -> PyResult<Bound<'py, PyAny>> {
    create_deferred(py, reactor, async move {
        for _ in 0..n {
            tokio::task::yield_now().await;
        }
        Ok(n)
    })
}

/// Calls `run_python_awaitable(reactor, factory)` from a thread of its own (a Tokio
/// runtime that is not the reactor's); `.wait(timeout)` returns `(ok, repr or error)`.
#[pyfunction]
fn call_python_in_thread(reactor: &Bound<'_, PyAny>, factory: Py<PyAny>) -> PyResult<ForeignCall> {
    let reactor = reactor.clone().unbind();
    let outcome: Arc<Outcome> = Arc::new((Mutex::new(None), Condvar::new()));
    let result = Arc::clone(&outcome);
    std::thread::Builder::new()
        .name("foreign-caller".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime");
            let answer = runtime.block_on(run_python_awaitable(reactor, move |py| {
                factory.bind(py).call0()
            }));
            let text = Python::attach(|py| match answer {
                Ok(value) => (
                    true,
                    value
                        .bind(py)
                        .repr()
                        .map(|r| r.to_string())
                        .unwrap_or_default(),
                ),
                Err(err) => (
                    false,
                    format!(
                        "{}: {}",
                        err.get_type(py)
                            .name()
                            .map(|n| n.to_string())
                            .unwrap_or_default(),
                        err.value(py)
                    ),
                ),
            });
            let (slot, done) = &*result;
            *slot.lock() = Some(text);
            done.notify_all();
        })
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(ForeignCall { outcome })
}

/// `(ok, repr or error)` once the call is done, and a condvar to wait for it.
type Outcome = (Mutex<Option<(bool, String)>>, Condvar);

/// The outcome of [`call_python_in_thread`].
#[pyclass(frozen, module = "pyo3_twisted.probes")]
struct ForeignCall {
    outcome: Arc<Outcome>,
}

#[pymethods]
impl ForeignCall {
    /// Waits (GIL released) up to `timeout` seconds (`inf`: until done); `None` if
    /// still running. A negative or NaN timeout is a `ValueError`.
    fn wait(&self, py: Python<'_>, timeout: f64) -> PyResult<Option<(bool, String)>> {
        let limit = if timeout == f64::INFINITY {
            None
        } else {
            Some(Duration::try_from_secs_f64(timeout).map_err(|_| {
                pyo3::exceptions::PyValueError::new_err(format!(
                    "timeout must be a number of seconds >= 0 (or inf), got {timeout}"
                ))
            })?)
        };
        let outcome = Arc::clone(&self.outcome);
        Ok(py.detach(move || {
            let (slot, done) = &*outcome;
            let mut slot = slot.lock();
            match limit {
                Some(limit) if slot.is_none() => {
                    done.wait_for(&mut slot, limit);
                }
                None => {
                    while slot.is_none() {
                        done.wait(&mut slot);
                    }
                }
                Some(_) => {}
            }
            slot.clone()
        }))
    }
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(call_python, m)?)?;
    m.add_function(wrap_pyfunction!(where_polled, m)?)?;
    m.add_function(wrap_pyfunction!(three_calls, m)?)?;
    m.add_function(wrap_pyfunction!(burn_cpu, m)?)?;
    m.add_function(wrap_pyfunction!(burn_cpu_after, m)?)?;
    m.add_function(wrap_pyfunction!(burn_cpu_beside, m)?)?;
    m.add_function(wrap_pyfunction!(sleep_beside, m)?)?;
    m.add_function(wrap_pyfunction!(log_messages, m)?)?;
    m.add_function(wrap_pyfunction!(call_python_many, m)?)?;
    m.add_function(wrap_pyfunction!(call_python_in_thread, m)?)?;
    m.add_function(wrap_pyfunction!(call_python_sequentially, m)?)?;
    m.add_function(wrap_pyfunction!(yield_many, m)?)?;
    m.add_class::<Gate>()?;
    m.add_class::<ForeignCall>()?;
    Ok(())
}
