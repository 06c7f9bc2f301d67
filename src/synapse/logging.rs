//! Synapse's `logging` module paths: [`context`].

pub mod context {
    //! Synapse's `LogContextHandle` and `with_logcontext`, over this crate's task
    //! scope.
    //!
    //! ```text
    //!  reactor thread                          Tokio task
    //!  LogContextHandle::capture(py) ───────▶ handle.scope(fut): fut runs in the scope,
    //!  (the current context, by the provider    so Logger records, run_python_awaitable
    //!   of the runtime in use on this thread)   and spawn keep the request's context
    //!                                          LogContextHandle::task_current(): the
    //!                                            scope of the calling task (no GIL)
    //!  with_logcontext(py, ctx, f): f runs with ctx current (None: the sentinel)
    //! ```
    //!
    //! A handle *is* the crate's task scope: what `create_deferred` gives every task.
    //! Synapse's `LoggingContext` storage itself stays where Synapse keeps it (its own
    //! `logging/context.rs`, behind `synapse.logging.context`); this crate reaches it
    //! through that module, the logcontext provider. Which runtime's provider the
    //! reactor thread uses: the runtime whose dispatched job is running, else the
    //! runtime of the last `RustRuntime` made on this thread.

    use std::cell::RefCell;
    use std::future::Future;
    use std::sync::{Arc, Weak};

    use futures_util::future::Either;
    use pyo3::exceptions::PyRuntimeError;
    use pyo3::prelude::*;

    use crate::bridge::Bridge;
    use crate::scope::TaskScope;

    thread_local! {
        /// The runtime whose logcontext provider this (reactor) thread uses.
        static CURRENT: RefCell<Weak<Bridge>> = const { RefCell::new(Weak::new()) };
    }

    /// Makes `bridge` the runtime in use on this thread.
    pub(crate) fn use_runtime(bridge: &Arc<Bridge>) {
        CURRENT.with(|current| *current.borrow_mut() = Arc::downgrade(bridge));
    }

    fn current_bridge() -> Option<Arc<Bridge>> {
        CURRENT.with(|current| current.borrow().upgrade())
    }

    /// Runs a dispatched job `f` of `bridge` with `context` current (the sentinel for
    /// `None`), `bridge` in use on this thread meanwhile. Reactor thread.
    pub(crate) fn in_dispatch<R>(
        py: Python<'_>,
        bridge: &Arc<Bridge>,
        context: Option<&Py<PyAny>>,
        f: impl FnOnce() -> PyResult<R>,
    ) -> PyResult<R> {
        let previous = CURRENT.with(|current| current.replace(Arc::downgrade(bridge)));
        let result = match bridge.provider() {
            Some(provider) => provider.with_context_or_sentinel(py, context, f),
            None => f(),
        };
        CURRENT.with(|current| *current.borrow_mut() = previous);
        result
    }

    /// A captured logging context, cheap to clone and readable without the GIL:
    /// Synapse's `LogContextHandle`, as this crate's task scope.
    #[derive(Clone)]
    pub struct LogContextHandle {
        /// None: the sentinel, captured where no runtime was in use.
        scope: Option<Arc<TaskScope>>,
    }

    impl std::fmt::Debug for LogContextHandle {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("LogContextHandle")
                .field(
                    "sentinel",
                    &self.scope.as_ref().is_none_or(|s| s.context().is_none()),
                )
                .finish()
        }
    }

    impl LogContextHandle {
        /// The calling thread's current context: on the reactor thread, through the
        /// provider of the runtime in use there (the sentinel if none is); in a
        /// bridged Tokio task, that task's.
        pub fn capture(py: Python<'_>) -> Self {
            if let Some(scope) = TaskScope::current() {
                return Self { scope: Some(scope) };
            }
            let Some(bridge) = current_bridge() else {
                return Self { scope: None };
            };
            let context = match bridge.provider().map(|p| p.capture(py)) {
                Some(Ok(context)) => context,
                Some(Err(err)) => {
                    crate::errors::report(py, err, "pyo3-twisted: capturing the logcontext");
                    None
                }
                None => None,
            };
            Self {
                scope: Some(Arc::new(TaskScope::new(bridge, context))),
            }
        }

        /// The handle of the calling task, if it runs in a bridged scope (a
        /// `create_deferred` future, its `spawn`ed children, or a
        /// [`scope`](Self::scope)d future). Any thread, no GIL.
        pub fn task_current() -> Option<LogContextHandle> {
            TaskScope::current().map(|scope| Self { scope: Some(scope) })
        }

        /// `fut` running in this context: Rust log records go to it, and
        /// `run_python_awaitable` runs Python in it. Its CPU time is charged to it.
        pub fn scope<F>(self, fut: F) -> impl Future<Output = F::Output>
        where
            F: Future,
        {
            match self.scope {
                Some(scope) => Either::Left(TaskScope::enter(scope, fut)),
                // Captured where no runtime was in use: nothing to enter.
                None => Either::Right(fut),
            }
        }

        /// The captured context, or `None` for the sentinel.
        pub fn logging_context(&self) -> Option<&Py<PyAny>> {
            self.scope.as_ref().and_then(|scope| scope.context())
        }
    }

    /// Runs `f` with `context` as the current logcontext (`None`: the sentinel), and
    /// restores the previous one afterwards whether or not `f` fails: Python's
    /// `with PreserveLoggingContext(context):`. A finished context is not re-entered:
    /// `f` runs in the sentinel. Reactor thread, through the provider of the runtime
    /// in use there; with none in use it is an error, since no context could be set.
    pub fn with_logcontext<R>(
        py: Python<'_>,
        context: Option<Py<PyAny>>,
        f: impl FnOnce() -> PyResult<R>,
    ) -> PyResult<R> {
        let bridge = current_bridge().ok_or_else(|| {
            PyRuntimeError::new_err(
                "with_logcontext: no pyo3-twisted runtime is in use on this thread \
                 (make a RustRuntime on it first, or call it from a dispatched job)",
            )
        })?;
        match bridge.provider() {
            Some(provider) => provider.with_context_or_sentinel(py, context.as_ref(), f),
            None => f(),
        }
    }
}
