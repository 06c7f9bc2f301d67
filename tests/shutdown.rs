//! Reactor shutdown: in-flight work finishes or is failed with `RuntimeShutdown`.

mod common;

use std::time::Duration;

use common::*;
use pyo3::prelude::*;
use pyo3::types::PyList;
use pyo3_twisted::{create_deferred, install_runtime, RuntimeConfig, RuntimeShutdown};

#[test]
fn shutdown_waits_for_short_work_and_fails_long_work() {
    with_python(|py| {
        let reactor = memory_reactor(py, true)?;
        install_runtime(
            &reactor,
            RuntimeConfig {
                worker_threads: 2,
                tokio: pyo3_twisted::TokioRuntime::PerReactor,
                shutdown_timeout: Duration::from_millis(300),
                ..RuntimeConfig::default()
            },
        )?;
        let outcomes = PyList::empty(py);
        let append = outcomes.getattr("append")?;
        for i in 0..200_u64 {
            let long = i % 2 == 0;
            let d = create_deferred(py, &reactor, async move {
                let pause = if long { 3_600_000 } else { 20 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
                Ok(i)
            })?;
            d.call_method1("addBoth", (&append,))?;
        }
        reactor.call_method0("shutdown")?;
        assert_eq!(outcomes.len(), 200, "every Deferred fired");
        let shutdown_type = py.get_type::<RuntimeShutdown>();
        let mut values = 0;
        let mut shut_down = 0;
        for outcome in outcomes.iter() {
            if outcome.extract::<u64>().is_ok() {
                values += 1;
            } else if outcome
                .call_method1("check", (&shutdown_type,))?
                .is_truthy()?
            {
                shut_down += 1;
            }
        }
        assert_eq!((values, shut_down), (100, 100));
        let stats = pyo3_twisted::stats(&reactor)?;
        assert_eq!(stats.state, "stopped");
        assert_eq!(stats.tasks_aborted_at_shutdown, 100);
        assert_eq!(stats.tokio_threads_live, 0);

        // After shutdown: a clear, immediate failure.
        let late = create_deferred(py, &reactor, async { Ok(1) })?;
        let value = get_failure_value(&reactor, &late, &shutdown_type)?;
        assert!(value.str()?.to_str()?.contains("shutting down"));
        Ok(())
    })
}

#[test]
fn reactor_that_never_ran_delivers_work_at_shutdown() {
    with_python(|py| {
        // Never run: the first create_deferred started the runtime anyway, and the
        // harness's shutdown delivers the value before stopping.
        let reactor = memory_reactor(py, false)?;
        let d = create_deferred(py, &reactor, async { Ok(1) })?;
        let outcomes = PyList::empty(py);
        d.call_method1("addBoth", (outcomes.getattr("append")?,))?;
        reactor.call_method0("shutdown")?;
        assert_eq!(outcomes.len(), 1);
        assert_eq!(outcomes.get_item(0)?.extract::<i64>()?, 1);
        assert_eq!(pyo3_twisted::stats(&reactor)?.state, "stopped");
        Ok(())
    })
}
