//! The native pool's connections: how one is opened (host list, `sslmode`, TLS), what
//! it remembers (its statements, its server session), and the pool's counters.
//!
//! ```text
//!  deadpool (checkout on the transaction's Tokio task)
//!    └▶ PgManager::create: for each host in order
//!         sslmode disable/allow/prefer/require/verify-* → plaintext and/or TLS attempts
//!         tokio-postgres connect  ─▶  connection task spawned on Tokio (counts its end)
//!    └▶ PgManager::recycle: a closed connection is dropped, not handed out
//! ```
//!
//! Everything runs on Tokio workers: the GIL is never involved.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use deadpool::managed::{Metrics, RecycleError, RecycleResult};
use tokio_postgres::config::SslMode as WireSslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::Socket;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::libpq::{ConnectOptions, SslMode, Target};

/// Statements kept per connection, at most: dynamic SQL must not grow it forever.
const STATEMENT_CACHE_LIMIT: usize = 512;

/// One pooled connection.
pub(crate) struct PgConnection {
    pub(crate) client: tokio_postgres::Client,
    statements: HashMap<String, tokio_postgres::Statement>,
    /// The server session its cached statements live in (`pg_backend_pid()` at the
    /// first transaction), when the statement cache is on.
    pub(crate) backend_pid: Option<i32>,
}

impl PgConnection {
    /// A named statement for `sql`, prepared once per connection.
    pub(crate) async fn prepare_cached(
        &mut self,
        sql: &str,
    ) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        if self.statements.len() >= STATEMENT_CACHE_LIMIT {
            // Dropping a Statement closes it on the server.
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

/// The pool's running totals, read by [`PostgresPool::status`](super::PostgresPool::status).
#[derive(Default)]
pub(crate) struct PoolCounters {
    pub(crate) checkouts: AtomicU64,
    pub(crate) checkout_waits: AtomicU64,
    pub(crate) checkout_timeouts: AtomicU64,
    pub(crate) retries_serialization: AtomicU64,
    pub(crate) retries_deadlock: AtomicU64,
    pub(crate) retries_connection: AtomicU64,
    pub(crate) connections_opened: AtomicU64,
    pub(crate) connections_closed: AtomicU64,
}

impl PoolCounters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why no connection could be opened, host by host.
#[derive(Debug)]
pub(crate) struct ConnectError {
    pub(crate) message: String,
    /// Every host failed the way a restarting or unreachable server does: worth
    /// trying again on a new connection (`reconnect_timeout`). Not for a refused
    /// password, a certificate that does not verify, or a missing file.
    pub(crate) transient: bool,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Opens connections as libpq would for the resolved options.
pub(crate) struct PgManager {
    options: ConnectOptions,
    /// `None` with sslmode=disable.
    tls: Option<MakeRustlsConnect>,
    counters: Arc<PoolCounters>,
}

impl PgManager {
    pub(crate) fn new(
        options: ConnectOptions,
        tls: Option<rustls::ClientConfig>,
        counters: Arc<PoolCounters>,
    ) -> Self {
        Self {
            options,
            tls: tls.map(MakeRustlsConnect::new),
            counters,
        }
    }

    /// The attempts libpq makes for one host, in order.
    fn wire_modes(&self, target: &Target) -> &'static [WireSslMode] {
        if target.is_unix_socket() || self.tls.is_none() {
            // libpq never encrypts Unix-socket connections, whatever sslmode says.
            return &[WireSslMode::Disable];
        }
        match self.options.tls.mode {
            SslMode::Disable => &[WireSslMode::Disable],
            SslMode::Allow => &[WireSslMode::Disable, WireSslMode::Require],
            SslMode::Prefer => &[WireSslMode::Prefer, WireSslMode::Disable],
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => &[WireSslMode::Require],
        }
    }

    async fn connect_host(&self, target: &Target) -> Result<PgConnection, (String, bool)> {
        let mut config = self.options.base.clone();
        config.host(&target.host).port(target.port);
        if let Some(addr) = target.hostaddr {
            config.hostaddr(addr);
        }
        if let Some(password) = &target.password {
            config.password(password);
        }
        let modes = self.wire_modes(target);
        let mut last = None;
        for (i, mode) in modes.iter().enumerate() {
            config.ssl_mode(*mode);
            let opening = async {
                match (&self.tls, mode) {
                    (Some(tls), WireSslMode::Prefer | WireSslMode::Require) => {
                        open(&config, tls.clone(), &self.counters).await
                    }
                    _ => open(&config, tokio_postgres::NoTls, &self.counters).await,
                }
            };
            // The whole of it, TCP, TLS and authentication, as libpq's connect_timeout
            // (tokio-postgres's own covers the TCP connect only). Real time: this is
            // the network, whatever clock the caller's task follows.
            let opened = match self.options.connect_timeout {
                Some(limit) => match tokio::time::timeout(limit, opening).await {
                    Ok(opened) => opened,
                    Err(_) => {
                        return Err((
                            format!(
                                "{}: no connection within {limit:?} (connect_timeout)",
                                target.describe()
                            ),
                            true,
                        ))
                    }
                },
                None => opening.await,
            };
            match opened {
                Ok(client) => {
                    return Ok(PgConnection {
                        client,
                        statements: HashMap::new(),
                        backend_pid: None,
                    });
                }
                Err(err) => {
                    let unreachable = is_unreachable(&err);
                    last = Some(err);
                    // libpq's second try (allow: with TLS; prefer: without) is for a
                    // server that refused the first, not for one that is not there.
                    if unreachable || i + 1 == modes.len() {
                        break;
                    }
                }
            }
        }
        let Some(err) = last else {
            return Err(("no connection attempt was made".into(), false));
        };
        let transient = super::postgres::is_connection_loss(&err) && !is_tls_failure(&err);
        Err((self.explain(target, &err), transient))
    }

    /// The failure, with what to change where we can tell.
    fn explain(&self, target: &Target, err: &tokio_postgres::Error) -> String {
        let mut message = super::postgres::describe(err);
        let user = &self.options.user;
        if message.contains("password missing") {
            message = format!(
                "the server asks user {user:?} for a password and none was given: put it \
                 in the DSN, in PGPASSWORD, or in a password file (~/.pgpass or PGPASSFILE; \
                 lines of host:port:database:user:password, mode 0600)"
            );
        } else if is_tls_failure(err) {
            let mode = self.options.tls.mode;
            message = format!("{message} (sslmode={})", mode.name());
            if mode == SslMode::VerifyFull && message.contains("NotValidForName") {
                message.push_str(&format!(
                    ": the server's certificate is not valid for the host name {:?}",
                    target.host
                ));
            }
        } else if err
            .as_db_error()
            .is_some_and(|db| db.message().contains("no encryption"))
        {
            message.push_str(&format!(
                " (sslmode={}: the server requires TLS for this user; use sslmode=require \
                 or stronger)",
                self.options.tls.mode.name()
            ));
        }
        format!("{}: {message}", target.describe())
    }
}

/// A refused, unroutable or timed-out connection: the server is not there.
fn is_unreachable(err: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(
                io.kind(),
                ConnectionRefused | NotFound | TimedOut | AddrNotAvailable | PermissionDenied
            );
        }
        source = cause.source();
    }
    false
}

/// The TLS handshake failed (a certificate that does not verify, a server without TLS
/// where it is required): no retry will change that.
fn is_tls_failure(err: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if cause.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                return true;
            }
        }
        source = cause.source();
    }
    let text = err.to_string();
    text.contains("TLS") || text.contains("does not support")
}

/// Connects, and runs the connection on its own Tokio task, counting its end.
async fn open<T>(
    config: &tokio_postgres::Config,
    tls: T,
    counters: &Arc<PoolCounters>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config.connect(tls).await?;
    PoolCounters::bump(&counters.connections_opened);
    let counters = counters.clone();
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            log::debug!("PostgreSQL connection ended: {err}");
        }
        PoolCounters::bump(&counters.connections_closed);
    });
    Ok(client)
}

impl deadpool::managed::Manager for PgManager {
    type Type = PgConnection;
    type Error = ConnectError;

    async fn create(&self) -> Result<PgConnection, ConnectError> {
        let mut failures = Vec::new();
        let mut transient = true;
        for target in &self.options.targets {
            match self.connect_host(target).await {
                Ok(connection) => return Ok(connection),
                Err((message, host_transient)) => {
                    transient &= host_transient;
                    failures.push(message);
                }
            }
        }
        Err(ConnectError {
            message: failures.join("; "),
            transient,
        })
    }

    async fn recycle(
        &self,
        connection: &mut PgConnection,
        _: &Metrics,
    ) -> RecycleResult<ConnectError> {
        if connection.client.is_closed() {
            return Err(RecycleError::message("the connection was closed"));
        }
        Ok(())
    }
}
