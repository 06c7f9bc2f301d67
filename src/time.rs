//! Timers that follow the clock of the reactor a task was started from.
//!
//! Twisted code is tested in virtual time: a memory reactor's `advance(n)` fires
//! every `callLater` that falls due, and no real time passes. This module gives Rust
//! tasks the same: [`sleep`], [`sleep_until`], [`timeout`] and [`interval`] follow
//! the clock of their runtime, chosen at install ([`ClockMode`](crate::ClockMode)):
//!
//! - on a reactor a test drives by hand (one with an `advance` method, such as
//!   Twisted's `Clock`, `MemoryReactorClock` and
//!   `pyo3_twisted.testing.ThreadedMemoryReactorClock`), the **reactor's clock**:
//!   a timer fires when `advance` moves the reactor's time past its deadline, and
//!   never before. Timers due together fire in deadline order, and those with equal
//!   deadlines in the order they were started. One `callLater` serves all of a
//!   runtime's timers; dropping a sleeping future removes its timer (and the
//!   `callLater` with the last one);
//! - on every other reactor, **Tokio's timers**: real time, with no reactor round
//!   trip per timer.
//!
//! ```text
//!  sleep(d) (worker) ──registration──▶ mailbox ──▶ reactor: deadline = reactor.seconds() + d
//!  reactor.advance(n) ──callLater──▶ due timers fire, in order ──wake──▶ task (worker)
//! ```
//!
//! Threads: every function here may be called from any thread of a bridged task;
//! the reactor clock's bookkeeping runs on the reactor thread (`timer_queue`).
//!
//! # What a caller may rely on
//!
//! - The runtime is the calling task's: that of the `create_deferred` future (or the
//!   [`Runtime`](crate::Runtime) task, or [`spawn`](crate::spawn)ed child) it runs
//!   in. Elsewhere, with no reactor known, every function fails with
//!   [`ErrorKind::NoClock`].
//! - On the reactor's clock a [`sleep`] starts when the reactor thread registers it,
//!   at most one mailbox drain after the call: its deadline is the reactor's time
//!   then, plus the duration. A test advancing the reactor should first let the task
//!   reach its sleep (`pyo3_twisted.stats(reactor)["timers_pending"]` counts the
//!   timers registered and waiting).
//! - [`now`] on the reactor's clock is the reactor's time as this runtime last read
//!   it (at every timer registration and firing); it never runs backwards.
//! - Timers still waiting when the runtime shuts down end with
//!   [`ErrorKind::Shutdown`].
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use pyo3::prelude::*;
//!
//! /// Retries `fetch` with backoff; in a test on a memory reactor, each wait passes
//! /// as the test advances the reactor.
//! #[pyfunction]
//! fn fetch_with_retry<'py>(py: Python<'py>, reactor: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
//!     pyo3_twisted::create_deferred(py, reactor, async move {
//!         let mut delay = Duration::from_secs(1);
//!         for _ in 0..5 {
//!             match pyo3_twisted::time::timeout(Duration::from_secs(30), fetch()).await {
//!                 Ok(Ok(body)) => return Ok(body),
//!                 _ => pyo3_twisted::time::sleep(delay).await?,
//!             }
//!             delay *= 2;
//!         }
//!         Err(pyo3::exceptions::PyRuntimeError::new_err("gave up"))
//!     })
//! }
//! # async fn fetch() -> PyResult<String> { Ok(String::new()) }
//! ```
//!
//! ```python
//! d = fetch_with_retry(reactor)
//! reactor.advance(1)   # the first retry's backoff, in no real time
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use once_cell::sync::Lazy;
use pyo3::exceptions::{PyRuntimeError, PyTimeoutError, PyValueError};
use pyo3::PyErr;

use crate::bridge::Bridge;
use crate::errors::RuntimeShutdown;
use crate::scope::TaskScope;
use crate::timer_queue::{Deadline, Timer, TimerState};

/// Where Tokio-clock instants count from: the first use in this process.
static ORIGIN: Lazy<std::time::Instant> = Lazy::new(std::time::Instant::now);

/// A point in time on the calling task's clock: the reactor's (its seconds) or
/// Tokio's (monotonic, since an origin fixed in this process). Compare and subtract
/// only instants of the same runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(Duration);

impl Instant {
    /// The time since the clock's zero (on the reactor's clock, `reactor.seconds()`).
    pub fn since_zero(self) -> Duration {
        self.0
    }

    /// How long after `earlier` this is; zero if it is not later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// `self + d`, or `None` on overflow.
    pub fn checked_add(self, d: Duration) -> Option<Instant> {
        self.0.checked_add(d).map(Instant)
    }
}

impl std::ops::Add<Duration> for Instant {
    type Output = Instant;

    /// Saturates rather than overflowing: a deadline that far out never comes.
    fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(d))
    }
}

impl std::ops::Sub for Instant {
    type Output = Duration;

    /// Saturates at zero, like [`Instant::saturating_duration_since`].
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

/// Why a timer function failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Called outside a bridged task: no reactor, hence no clock, is known.
    NoClock,
    /// The runtime shut down (or its reactor was collected) before the deadline.
    Shutdown,
    /// A [`timeout`] passed before its future finished.
    Elapsed(Duration),
    /// An [`interval`] with a zero period.
    ZeroPeriod,
}

/// The error of this module's futures. Converts into a Python exception:
/// `RuntimeError` ([`ErrorKind::NoClock`]), `RuntimeShutdown`, `TimeoutError`
/// ([`ErrorKind::Elapsed`]) or `ValueError`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
}

impl Error {
    fn new(kind: ErrorKind) -> Self {
        Self { kind }
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// Whether a [`timeout`] passed.
    pub fn is_elapsed(&self) -> bool {
        matches!(self.kind, ErrorKind::Elapsed(_))
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            ErrorKind::NoClock => f.write_str(
                "pyo3_twisted::time used outside a bridged task: no reactor is known, so \
                 there is no clock to follow (call it inside a create_deferred future, a \
                 Runtime's task or a task started with pyo3_twisted::spawn)",
            ),
            ErrorKind::Shutdown => {
                f.write_str("the pyo3-twisted runtime shut down before this timer fired")
            }
            ErrorKind::Elapsed(d) => write!(f, "timed out after {d:?}"),
            ErrorKind::ZeroPeriod => f.write_str("an interval's period must be more than zero"),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        let message = err.to_string();
        match err.kind {
            ErrorKind::NoClock => PyRuntimeError::new_err(message),
            ErrorKind::Shutdown => RuntimeShutdown::new_err(message),
            ErrorKind::Elapsed(_) => PyTimeoutError::new_err(message),
            ErrorKind::ZeroPeriod => PyValueError::new_err(message),
        }
    }
}

/// The clock of the calling task's runtime.
enum Clock {
    Reactor(Arc<Bridge>),
    Tokio,
}

fn clock() -> Result<Clock, Error> {
    let bridge = TaskScope::current_bridge().ok_or(Error::new(ErrorKind::NoClock))?;
    if bridge.timers().is_some() {
        Ok(Clock::Reactor(bridge))
    } else if tokio::runtime::Handle::try_current().is_ok() {
        Ok(Clock::Tokio)
    } else {
        Err(Error::new(ErrorKind::NoClock))
    }
}

/// The current time on the calling task's clock.
pub fn now() -> Result<Instant, Error> {
    match clock()? {
        Clock::Reactor(bridge) => Ok(reactor_now(&bridge)),
        Clock::Tokio => Ok(Instant(ORIGIN.elapsed())),
    }
}

fn reactor_now(bridge: &Bridge) -> Instant {
    Instant(Duration::from_nanos(
        bridge.timers().map_or(0, |timers| timers.now()),
    ))
}

/// The wall-clock time as the reactor tells it (`reactor.seconds()`): on the
/// reactor's clock, its time as this runtime last read it; on Tokio's, the system
/// time in seconds since the Unix epoch (what a real reactor's `seconds()` returns).
pub fn reactor_seconds() -> Result<f64, Error> {
    match clock()? {
        Clock::Reactor(bridge) => Ok(reactor_now(&bridge).0.as_secs_f64()),
        Clock::Tokio => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())),
    }
}

/// Waits for `duration` on the calling task's clock.
///
/// The future fails with [`ErrorKind::NoClock`] outside a bridged task and with
/// [`ErrorKind::Shutdown`] if the runtime stops first. Dropping it cancels the
/// timer.
pub fn sleep(duration: Duration) -> Sleep {
    Sleep::new(Target::After(duration))
}

/// Waits until `deadline` on the calling task's clock (see [`sleep`]).
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep::new(Target::At(deadline))
}

#[derive(Clone, Copy, Debug)]
enum Target {
    After(Duration),
    At(Instant),
}

/// The future of [`sleep`] and [`sleep_until`].
#[derive(Debug)]
#[must_use = "a Sleep does nothing unless awaited"]
pub struct Sleep {
    target: Target,
    state: SleepState,
}

enum SleepState {
    Start,
    Tokio(Pin<Box<tokio::time::Sleep>>),
    Reactor {
        bridge: Arc<Bridge>,
        timer: Arc<Timer>,
    },
    Done,
}

impl std::fmt::Debug for SleepState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SleepState::Start => "Start",
            SleepState::Tokio(_) => "Tokio",
            SleepState::Reactor { .. } => "Reactor",
            SleepState::Done => "Done",
        })
    }
}

impl Sleep {
    fn new(target: Target) -> Self {
        Self {
            target,
            state: SleepState::Start,
        }
    }

    fn start(&mut self, cx: &mut Context<'_>) -> Result<(), Error> {
        match clock()? {
            Clock::Tokio => {
                let deadline = match self.target {
                    Target::After(d) => tokio::time::Instant::now() + d,
                    Target::At(at) => tokio::time::Instant::from_std(*ORIGIN + at.0),
                };
                self.state = SleepState::Tokio(Box::pin(tokio::time::sleep_until(deadline)));
            }
            Clock::Reactor(bridge) => {
                let timer = Arc::new(Timer::default());
                let _ = timer.poll_state(cx.waker());
                let deadline = match self.target {
                    Target::After(d) => Deadline::After(d),
                    Target::At(at) => {
                        Deadline::At(u64::try_from(at.0.as_nanos()).unwrap_or(u64::MAX))
                    }
                };
                let registration = Registration(Some(Arc::clone(&timer)));
                let job_bridge = Arc::clone(&bridge);
                bridge.mailbox().push(Box::new(move |py| {
                    let mut registration = registration;
                    match registration.0.take() {
                        Some(timer) => job_bridge.start_timer(py, timer, deadline),
                        None => Ok(()),
                    }
                }));
                self.state = SleepState::Reactor { bridge, timer };
            }
        }
        Ok(())
    }
}

/// A timer on its way to the reactor thread. Dropped without running (the mailbox
/// closed), it ends the timer as shut down, so that its future does not wait forever.
struct Registration(Option<Arc<Timer>>);

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(timer) = self.0.take() {
            timer.shut_down();
        }
    }
}

impl Future for Sleep {
    type Output = Result<(), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let SleepState::Start = this.state {
            if let Err(err) = this.start(cx) {
                this.state = SleepState::Done;
                return Poll::Ready(Err(err));
            }
        }
        let outcome = match &mut this.state {
            SleepState::Start | SleepState::Done => return Poll::Ready(Ok(())),
            SleepState::Tokio(sleep) => match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Ok(()),
                Poll::Pending => return Poll::Pending,
            },
            SleepState::Reactor { timer, .. } => match timer.poll_state(cx.waker()) {
                TimerState::Waiting => return Poll::Pending,
                TimerState::Fired => Ok(()),
                TimerState::ShutDown => Err(Error::new(ErrorKind::Shutdown)),
            },
        };
        this.state = SleepState::Done;
        Poll::Ready(outcome)
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let SleepState::Reactor { bridge, timer } =
            std::mem::replace(&mut self.state, SleepState::Done)
        {
            if timer.cancel() {
                let mailbox = Arc::clone(bridge.mailbox());
                mailbox.push(Box::new(move |py| bridge_remove(py, &bridge, &timer)));
            }
        }
    }
}

fn bridge_remove(py: pyo3::Python<'_>, bridge: &Bridge, timer: &Timer) -> pyo3::PyResult<()> {
    match bridge.timers() {
        Some(timers) => timers.remove(py, timer),
        None => Ok(()),
    }
}

/// Runs `future` for at most `duration` on the calling task's clock: its output, or
/// [`ErrorKind::Elapsed`] once the time passes (the future is then dropped).
pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    Timeout {
        future: Box::pin(future),
        sleep: sleep(duration),
        duration,
    }
}

/// The future of [`timeout`].
#[must_use = "a Timeout does nothing unless awaited"]
pub struct Timeout<F: Future> {
    future: Pin<Box<F>>,
    sleep: Sleep,
    duration: Duration,
}

impl<F: Future> std::fmt::Debug for Timeout<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeout")
            .field("duration", &self.duration)
            .finish_non_exhaustive()
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(output) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        let duration = self.duration;
        match Pin::new(&mut self.sleep).poll(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Err(Error::new(ErrorKind::Elapsed(duration)))),
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Ticks every `period` on the calling task's clock, the first tick at once.
///
/// A tick that comes late (the task was busy, or a test advanced the reactor by
/// several periods at once) is followed at once by the ticks missed, each
/// reporting its own scheduled instant, as Tokio's default `MissedTickBehavior::Burst`.
pub fn interval(period: Duration) -> Interval {
    Interval { period, next: None }
}

/// The ticker of [`interval`].
#[derive(Debug)]
pub struct Interval {
    period: Duration,
    next: Option<Instant>,
}

impl Interval {
    /// Waits for the next tick; returns the instant it was scheduled for.
    pub async fn tick(&mut self) -> Result<Instant, Error> {
        if self.period.is_zero() {
            return Err(Error::new(ErrorKind::ZeroPeriod));
        }
        let at = match self.next {
            Some(at) => at,
            None => now()?,
        };
        sleep_until(at).await?;
        self.next = Some(at + self.period);
        Ok(at)
    }

    /// The interval's period.
    pub fn period(&self) -> Duration {
        self.period
    }
}

/// Now on the clock [`wait`] follows: the calling task's reactor clock, else Tokio's.
#[cfg(feature = "postgres")]
pub(crate) fn clock_now() -> Instant {
    match clock() {
        Ok(Clock::Reactor(bridge)) => reactor_now(&bridge),
        _ => Instant(ORIGIN.elapsed()),
    }
}

/// `future`, or `None` if `duration` passes first, on the clock [`wait`] follows.
#[cfg(feature = "postgres")]
pub(crate) async fn within<F: Future>(duration: Duration, future: F) -> Option<F::Output> {
    match clock() {
        // Shutdown ends the wait as a timeout; the runtime is stopping anyway.
        Ok(Clock::Reactor(_)) => timeout(duration, future).await.ok(),
        _ => tokio::time::timeout(duration, future).await.ok(),
    }
}

/// The crate's own waits (retry backoff, reconnect): the reactor's clock when the
/// calling task follows it, else Tokio's, so that code running outside any bridged
/// task (a Rust-only program's pool) waits as before.
#[cfg(feature = "postgres")]
pub(crate) async fn wait(duration: Duration) {
    match clock() {
        Ok(Clock::Reactor(_)) => {
            // Shutdown ends the wait early; the caller's next step sees the runtime
            // stopped.
            let _ = sleep(duration).await;
        }
        _ => tokio::time::sleep(duration).await,
    }
}

#[cfg(test)]
mod tests {
    use pyo3::prelude::*;

    use super::*;

    fn poll_once<F: Future>(fut: F) -> Poll<F::Output> {
        let mut fut = std::pin::pin!(fut);
        fut.as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[test]
    fn outside_a_bridged_task_there_is_no_clock() {
        let Poll::Ready(Err(err)) = poll_once(sleep(Duration::from_secs(1))) else {
            panic!("a sleep with no clock must fail at once");
        };
        assert_eq!(err.kind(), &ErrorKind::NoClock);
        assert!(err.to_string().contains("outside a bridged task"), "{err}");
        assert_eq!(now().unwrap_err().kind(), &ErrorKind::NoClock);
        let Poll::Ready(Err(err)) = poll_once(timeout(
            Duration::from_secs(1),
            std::future::pending::<()>(),
        )) else {
            panic!("a timeout with no clock must fail at once");
        };
        assert_eq!(err.kind(), &ErrorKind::NoClock);
        let Poll::Ready(Err(err)) = poll_once(interval(Duration::ZERO).tick()) else {
            panic!("a zero period must fail");
        };
        assert_eq!(err.kind(), &ErrorKind::ZeroPeriod);
    }

    #[test]
    fn instants_saturate_instead_of_overflowing() {
        let zero = Instant(Duration::ZERO);
        let later = zero + Duration::from_secs(5);
        assert_eq!(later - zero, Duration::from_secs(5));
        assert_eq!(zero - later, Duration::ZERO);
        assert_eq!(
            Instant(Duration::MAX) + Duration::from_secs(1),
            Instant(Duration::MAX)
        );
        assert_eq!(
            Instant(Duration::MAX).checked_add(Duration::from_secs(1)),
            None
        );
    }

    #[test]
    fn errors_become_the_python_exceptions_callers_expect() {
        Python::initialize();
        pyo3::Python::attach(|py| {
            let cases = [
                (ErrorKind::NoClock, "RuntimeError"),
                (ErrorKind::Shutdown, "RuntimeShutdown"),
                (ErrorKind::Elapsed(Duration::from_secs(5)), "TimeoutError"),
                (ErrorKind::ZeroPeriod, "ValueError"),
            ];
            for (kind, name) in cases {
                let err: PyErr = Error::new(kind).into();
                assert_eq!(err.get_type(py).name().unwrap().to_string(), name);
            }
        });
    }
}
