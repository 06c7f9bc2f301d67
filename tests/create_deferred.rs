//! `create_deferred` from Rust: results, errors, panics, cancellation, threads.

mod common;

use std::time::Duration;

use common::*;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3_twisted::{create_deferred, install_runtime, Runtime, RuntimeConfig, RustPanicError};

fn two_workers() -> RuntimeConfig {
    RuntimeConfig {
        worker_threads: 2,
        tokio: pyo3_twisted::TokioRuntime::PerReactor,
        ..RuntimeConfig::default()
    }
}

#[test]
fn value_arrives_converted_on_the_reactor_thread() {
    with_python(|py| {
        let reactor = memory_reactor(py, true)?;
        install_runtime(&reactor, two_workers())?;
        let d = create_deferred(py, &reactor, async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(vec![("answer".to_owned(), 42_i64)])
        })?;
        let value = get_success(&reactor, &d)?;
        assert_eq!(
            value.extract::<Vec<(String, i64)>>()?,
            vec![("answer".to_owned(), 42)]
        );
        reactor.call_method0("shutdown")?;
        Ok(())
    })
}

#[test]
fn rust_error_arrives_as_the_same_exception() {
    with_python(|py| {
        let reactor = memory_reactor(py, true)?;
        let d = create_deferred(py, &reactor, async {
            Err::<(), _>(PyValueError::new_err("no such user"))
        })?;
        let value = get_failure_value(&reactor, &d, &py.get_type::<PyValueError>())?;
        assert_eq!(value.str()?.to_str()?, "no such user");
        reactor.call_method0("shutdown")?;
        Ok(())
    })
}

#[test]
fn panic_arrives_as_rust_panic_error_and_the_runtime_survives() {
    with_python(|py| {
        let reactor = memory_reactor(py, true)?;
        let d = create_deferred(py, &reactor, async {
            if true {
                panic!("handler exploded: {}", 7);
            }
            Ok(())
        })?;
        let value = get_failure_value(&reactor, &d, &py.get_type::<RustPanicError>())?;
        assert_eq!(value.str()?.to_str()?, "handler exploded: 7");
        let after = create_deferred(py, &reactor, async { Ok("still alive") })?;
        assert_eq!(
            get_success(&reactor, &after)?.extract::<String>()?,
            "still alive"
        );
        assert_eq!(stat(&reactor, "tasks_panicked"), 1);
        reactor.call_method0("shutdown")?;
        Ok(())
    })
}

struct SendOnDrop(crossbeam_channel::Sender<()>);

impl Drop for SendOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

#[test]
fn cancel_drops_the_future_and_fails_with_cancelled_error_once() {
    with_python(|py| {
        let reactor = memory_reactor(py, true)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let guard = SendOnDrop(tx);
        let d = create_deferred(py, &reactor, async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok(())
        })?;
        let fired = pyo3::types::PyList::empty(py);
        d.call_method1("addErrback", (fired.getattr("append")?,))?;
        d.call_method0("cancel")?;
        assert!(
            recv_detached(py, &rx, Duration::from_secs(5)).is_some(),
            "the future was not dropped after cancel"
        );
        reactor.call_method0("turn")?;
        assert_eq!(fired.len(), 1);
        let cancelled = py
            .import("twisted.internet.defer")?
            .getattr("CancelledError")?;
        assert!(fired
            .get_item(0)?
            .call_method1("check", (cancelled,))?
            .is_truthy()?);
        assert_eq!(stat(&reactor, "tasks_cancelled"), 1);
        assert_eq!(stat(&reactor, "tasks_in_flight"), 0);
        reactor.call_method0("shutdown")?;
        Ok(())
    })
}

#[test]
fn called_off_the_reactor_thread_is_a_clear_error() {
    let reactor = with_python(|py| {
        let reactor = memory_reactor(py, true)?;
        install_runtime(&reactor, two_workers())?;
        Ok(reactor.unbind())
    });
    let message = std::thread::spawn(move || {
        with_python(|py| {
            let err = create_deferred(py, reactor.bind(py), async { Ok(1) }).unwrap_err();
            assert!(err.is_instance_of::<PyRuntimeError>(py));
            reactor.bind(py).call_method0("shutdown")?;
            Ok(err.to_string())
        })
    })
    .join()
    .unwrap();
    assert!(message.contains("reactor thread"), "{message}");
}

#[test]
fn install_twice_same_config_is_a_no_op_different_is_an_error() {
    with_python(|py| {
        let reactor = memory_reactor(py, true)?;
        install_runtime(&reactor, two_workers())?;
        install_runtime(&reactor, two_workers())?;
        let err = install_runtime(
            &reactor,
            RuntimeConfig {
                worker_threads: 3,
                tokio: pyo3_twisted::TokioRuntime::PerReactor,
                ..RuntimeConfig::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("different configuration"), "{err}");
        let bad = install_runtime(
            &memory_reactor(py, true)?,
            RuntimeConfig {
                worker_threads: 0,
                tokio: pyo3_twisted::TokioRuntime::PerReactor,
                ..RuntimeConfig::default()
            },
        );
        assert!(bad.unwrap_err().to_string().contains("worker_threads"));
        reactor.call_method0("shutdown")?;
        Ok(())
    })
}

#[test]
fn first_use_starts_the_runtime_on_a_reactor_that_never_runs() {
    with_python(|py| {
        let reactor = memory_reactor(py, false)?;
        let runtime = Runtime::install(&reactor, two_workers())?;
        // Installing starts nothing.
        assert_eq!(stat(&reactor, "tokio_threads_live"), 0);
        assert_eq!(runtime.stats().state, "installed");
        // The first bridged call does; a handle works like the reactor.
        let d = create_deferred(py, &runtime, async { Ok(5) })?;
        assert_eq!(runtime.stats().state, "running");
        assert_eq!(stat(&reactor, "tokio_threads_live"), 2);
        assert_eq!(get_success(&reactor, &d)?.extract::<i64>()?, 5);
        assert!(!reactor.getattr("running")?.is_truthy()?);
        // Shutdown by handle, blocking; twice is a no-op; later work is refused.
        runtime.shutdown(py, std::time::Duration::from_secs(1))?;
        runtime.shutdown(py, std::time::Duration::from_secs(1))?;
        assert!(runtime.is_shut_down());
        assert_eq!(stat(&reactor, "tokio_threads_live"), 0);
        assert!(runtime.tokio_handle().is_err());
        Ok(())
    })
}

#[test]
fn handle_offers_tokio_handle_spawn_and_dispatch() {
    with_python(|py| {
        let reactor = memory_reactor(py, false)?;
        let runtime = Runtime::install(&reactor, two_workers())?;
        let (tx, rx) = crossbeam_channel::bounded(1);
        let child = runtime.clone();
        runtime.tokio_handle()?.spawn(async move {
            let value = child
                .spawn(async { 6 * 7 })
                .expect("spawn on a running runtime")
                .await
                .expect("the child task ran");
            let sent = child.dispatch(move |py| {
                let ident: u64 = py
                    .import("threading")?
                    .call_method0("get_ident")?
                    .extract()?;
                tx.send((value, ident)).ok();
                Ok(())
            });
            sent.expect("dispatch on a running runtime");
        });
        let d = create_deferred(py, &runtime, async { Ok(()) })?;
        get_success(&reactor, &d)?;
        let outcome = loop {
            if let Ok(outcome) = rx.try_recv() {
                break outcome;
            }
            reactor.call_method1("wait_for_work", (10.0,))?;
            reactor.call_method0("turn")?;
        };
        // Ran on the reactor (this test's) thread.
        let here: u64 = py
            .import("threading")?
            .call_method0("get_ident")?
            .extract()?;
        assert_eq!(outcome, (42, here));
        runtime.shutdown(py, std::time::Duration::from_secs(1))?;
        assert!(runtime.dispatch(|_py| Ok(())).is_err());
        Ok(())
    })
}

#[test]
fn spawned_children_run_on_the_same_runtime() {
    with_python(|py| {
        let reactor = memory_reactor(py, true)?;
        install_runtime(
            &reactor,
            RuntimeConfig {
                thread_name: "child-test".into(),
                ..two_workers()
            },
        )?;
        let d = create_deferred(py, &reactor, async {
            let child =
                pyo3_twisted::spawn(async { std::thread::current().name().map(str::to_owned) });
            child
                .await
                .map_err(|e| PyRuntimeError::new_err(e.to_string()))
        })?;
        let name: Option<String> = get_success(&reactor, &d)?.extract()?;
        assert_eq!(name.as_deref(), Some("child-test"));
        reactor.call_method0("shutdown")?;
        Ok(())
    })
}
