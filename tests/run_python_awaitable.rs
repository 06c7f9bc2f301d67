//! `run_python_awaitable` and `ReactorHandle` from Rust, with and without a
//! logcontext provider.

mod common;

use common::*;
use pyo3::exceptions::PyKeyError;
use pyo3::prelude::*;
use pyo3_twisted::{
    create_deferred, install_runtime, run_python_awaitable, LogContextProvider, ReactorHandle,
    RuntimeConfig,
};
use std::time::Duration;

const HELPERS: &str = r#"
from twisted.internet import defer

def later(reactor, value):
    d = defer.Deferred()
    reactor.callLater(0, d.callback, value)
    return d

async def coroutine(reactor, value):
    return await later(reactor, value)

def fail():
    raise KeyError("missing")
"#;

fn config() -> RuntimeConfig {
    RuntimeConfig {
        worker_threads: 2,
        tokio: pyo3_twisted::TokioRuntime::PerReactor,
        ..RuntimeConfig::default()
    }
}

#[test]
fn awaits_a_coroutine_and_a_deferred_from_a_bridged_future() {
    with_python(|py| {
        let helpers = define_module(py, "awaitable_helpers", HELPERS)?;
        let reactor = memory_reactor(py, true)?;
        helpers.setattr("reactor", &reactor)?;
        install_runtime(&reactor, config())?;
        let handle_py = reactor.clone().unbind();
        let d = create_deferred(py, &reactor, async move {
            let handle = ReactorHandle::current().expect("in a bridged task");
            let coroutine = handle
                .run_python_awaitable(|py| {
                    let h = py.import("awaitable_helpers")?;
                    h.call_method1("coroutine", (h.getattr("reactor")?, "coroutine"))
                })
                .await?;
            let deferred = handle
                .run_python_awaitable(|py| {
                    let h = py.import("awaitable_helpers")?;
                    h.call_method1("later", (h.getattr("reactor")?, "deferred"))
                })
                .await?;
            let value = run_python_awaitable(handle_py, |py| {
                Ok(pyo3::types::PyString::new(py, "value").into_any())
            });
            drop(value); // never polled: nothing runs, nothing leaks
            Ok((coroutine, deferred))
        })?;
        let (a, b): (String, String) = get_success(&reactor, &d)?.extract()?;
        assert_eq!((a.as_str(), b.as_str()), ("coroutine", "deferred"));
        reactor.call_method0("shutdown")?;
        Ok(())
    })
}

#[test]
fn errors_keep_the_original_exception() {
    with_python(|py| {
        let helpers = define_module(py, "awaitable_helpers_err", HELPERS)?.unbind();
        let reactor = memory_reactor(py, true)?;
        install_runtime(&reactor, config())?;
        let handle = reactor.clone().unbind();
        let d = create_deferred(py, &reactor, async move {
            run_python_awaitable(handle, move |py| helpers.bind(py).call_method0("fail")).await
        })?;
        let value = get_failure_value(&reactor, &d, &py.get_type::<PyKeyError>())?;
        assert_eq!(value.str()?.to_str()?, "'missing'");
        reactor.call_method0("shutdown")?;
        Ok(())
    })
}

#[test]
fn reactor_handle_converts_on_the_reactor_thread() {
    with_python(|py| {
        let helpers = define_module(py, "awaitable_helpers_map", HELPERS)?;
        let reactor = memory_reactor(py, true)?;
        helpers.setattr("reactor", &reactor)?;
        install_runtime(&reactor, config())?;
        let d = create_deferred(py, &reactor, async move {
            let handle = ReactorHandle::current().expect("in a bridged task");
            let mut total = 0_i64;
            for i in 0..10_i64 {
                total += handle
                    .run_python_awaitable_map(
                        move |py| {
                            let h = py.import("awaitable_helpers_map")?;
                            h.call_method1("coroutine", (h.getattr("reactor")?, i))
                        },
                        |value| value.extract::<i64>(),
                    )
                    .await?;
            }
            Ok(total)
        })?;
        assert_eq!(get_success(&reactor, &d)?.extract::<i64>()?, 45);
        reactor.call_method0("shutdown")?;
        Ok(())
    })
}

#[test]
fn factory_runs_in_the_captured_logcontext() {
    with_python(|py| {
        let lc = logcontext(py)?;
        let reactor = memory_reactor(py, true)?;
        install_runtime(
            &reactor,
            RuntimeConfig {
                logcontext: LogContextProvider::Module("pyo3_twisted_test_logcontext".into()),
                ..config()
            },
        )?;
        let context = lc.getattr("LoggingContext")?.call1(("req-rust",))?;
        let set = lc.getattr("set_current_context")?;
        let previous = set.call1((&context,))?;
        let handle = reactor.clone().unbind();
        let d = create_deferred(py, &reactor, async move {
            run_python_awaitable(handle, |py| {
                let lc = py.import("pyo3_twisted_test_logcontext")?;
                lc.getattr("current_context")?
                    .call0()?
                    .str()
                    .map(Bound::into_any)
            })
            .await
        })?;
        // make_deferred_yieldable put the reactor thread back in the sentinel.
        assert!(!lc.getattr("current_context")?.call0()?.is_truthy()?);
        set.call1((previous,))?;
        assert_eq!(get_success(&reactor, &d)?.extract::<String>()?, "req-rust");
        reactor.call_method0("shutdown")?;
        Ok(())
    })
}

#[test]
fn unknown_reactor_is_a_clear_error() {
    let reactor = with_python(|py| Ok(memory_reactor(py, true)?.unbind()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let err = runtime
        .block_on(run_python_awaitable(reactor, |py| {
            Ok(py.None().into_bound(py))
        }))
        .unwrap_err();
    assert!(err.to_string().contains("no pyo3-twisted runtime"), "{err}");
}

#[test]
fn a_call_dropped_before_it_starts_drops_its_closures_on_the_reactor_thread() {
    with_python(|py| {
        let reactor = memory_reactor(py, true)?;
        install_runtime(&reactor, config())?;
        let factory_dropped = std::sync::Arc::new(std::sync::Mutex::new(None));
        let convert_dropped = std::sync::Arc::new(std::sync::Mutex::new(None));
        let (in_factory, in_convert) = (
            DropsOn(factory_dropped.clone()),
            DropsOn(convert_dropped.clone()),
        );
        // The reactor thread drains the mailbox only while the test pumps it: it
        // waits on this before pumping, so the start job finds the call dropped.
        let (dropped_tx, dropped_rx) = crossbeam_channel::bounded(1);
        let d = create_deferred(py, &reactor, async move {
            let handle = ReactorHandle::current().expect("in a bridged task");
            let mut call = Box::pin(handle.run_python_awaitable_map(
                move |py| {
                    let _keep = &in_factory;
                    Ok(py.None().into_bound(py))
                },
                move |_value| {
                    let _keep = &in_convert;
                    Ok(())
                },
            ));
            // The first poll queues the start job; the reactor has not run it: the
            // test pumps it only once the call is dropped.
            let first = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(std::future::Future::poll(call.as_mut(), cx))
            })
            .await;
            let pending = first.is_pending();
            drop(call);
            let _ = dropped_tx.send(());
            Ok(pending)
        })?;
        assert!(recv_detached(py, &dropped_rx, Duration::from_secs(10)).is_some());
        assert!(get_success(&reactor, &d)?.extract::<bool>()?);
        // The start job found the call abandoned: nothing started, and what the call
        // held went on this (the reactor's) thread, not on the Tokio worker that
        // dropped the future.
        let here = std::thread::current().id();
        assert_eq!(*factory_dropped.lock().unwrap(), Some(here));
        assert_eq!(*convert_dropped.lock().unwrap(), Some(here));
        assert_eq!(stat(&reactor, "awaitables_started"), 0);
        reactor.call_method0("shutdown")?;
        Ok(())
    })
}
