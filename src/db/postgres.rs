//! A native PostgreSQL pool: tokio-postgres connections from deadpool, no Python.
//!
//! ```text
//!  Tokio task: run_interaction(name, f)
//!    for attempt in 1..=max_attempts:
//!      connection ← deadpool (at most max_size)
//!      BEGIN ISOLATION LEVEL …;  f(txn)  (only Transaction calls may be awaited);  COMMIT
//!      40001 / 40P01 (in f or at COMMIT) → ROLLBACK, jittered backoff, again
//!      connection lost or refused before COMMIT → drop the connection, back off,
//!        again on a new one (for up to `reconnect_timeout`: a server restart)
//!      connection lost during COMMIT → error, never retried (it may have committed)
//! ```
//!
//! Everything runs on the calling Tokio task; the GIL is never involved.

use std::time::Duration;

use bytes::BytesMut;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use tokio_postgres::{IsolationLevel, NoTls, Row};

use super::{
    DbRow, DbValue, ErasedInteraction, ErasedResult, InTransactionCall, InteractionOptions,
    Placeholders, Transaction,
};

/// Configuration of a [`PostgresPool`].
#[derive(Clone, Debug)]
pub struct PostgresConfig {
    /// A libpq-style connection string or URL,
    /// e.g. `postgresql://synapse:secret@127.0.0.1:5432/synapse`. Connections are made
    /// without TLS: use it on loopback or a trusted network.
    pub dsn: String,
    /// Most connections open at once. Default: 10.
    pub max_size: usize,
    /// Isolation level of every transaction. Default: repeatable read (as Synapse).
    pub isolation_level: IsolationLevel,
    /// Attempts per transaction on serialization failures and deadlocks. Default: 5.
    pub max_attempts: u32,
    /// Base delay before a retry, doubled each time, with up to 100% jitter added.
    /// Default: 5 ms.
    pub retry_backoff: Duration,
    /// How long a transaction keeps retrying, on new connections, when the server
    /// drops or refuses connections before its COMMIT (a restart or failover), in
    /// addition to `max_attempts`. Retry delays grow to at most 250 ms. Zero turns
    /// these retries off. Default: 5 seconds.
    pub reconnect_timeout: Duration,
    /// How long a transaction waits for a pooled connection when all `max_size` are
    /// in use, before failing with [`CheckoutTimeout`] (never retried). `None` waits
    /// as long as it takes. Follows the task's clock ([`crate::time`]). Default: 30
    /// seconds.
    pub checkout_timeout: Option<Duration>,
    /// The server's `statement_timeout` for every statement of this pool's
    /// transactions (`SET LOCAL` after `BEGIN`, so it works behind PgBouncer too): a
    /// statement running longer is cancelled by the server, the transaction rolls
    /// back and fails with SQLSTATE 57014, never retried, and the connection goes back
    /// to the pool. `None` leaves the server's setting. Default: `None`.
    pub statement_timeout: Option<Duration>,
}

impl PostgresConfig {
    /// The defaults, connecting to `dsn`.
    pub fn new(dsn: impl Into<String>) -> Self {
        Self {
            dsn: dsn.into(),
            max_size: 10,
            isolation_level: IsolationLevel::RepeatableRead,
            max_attempts: 5,
            retry_backoff: Duration::from_millis(5),
            reconnect_timeout: Duration::from_secs(5),
            checkout_timeout: Some(Duration::from_secs(30)),
            statement_timeout: None,
        }
    }
}

/// A transaction waited longer than `checkout_timeout` for a connection of a
/// [`PostgresPool`] whose connections were all in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckoutTimeout {
    /// The pool's DSN, without its password.
    pub dsn: String,
    /// The pool's `max_size`.
    pub max_size: usize,
    /// How long the transaction waited.
    pub waited: Duration,
}

impl std::fmt::Display for CheckoutTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no connection of the pool for {} came free within {:?}: all {} (max_size) \
             are in use; raise max_size or checkout_timeout, or hold connections for less",
            self.dsn, self.waited, self.max_size
        )
    }
}

impl std::error::Error for CheckoutTimeout {}

/// A [`DatabasePool`](super::DatabasePool) over tokio-postgres, for Rust-only
/// programs.
///
/// ```no_run
/// # async fn f() -> anyhow::Result<()> {
/// use futures_util::FutureExt;
/// use pyo3_twisted::db::{DatabasePoolExt, DbRowExt, PostgresConfig, PostgresPool};
///
/// let pool = PostgresPool::new(PostgresConfig::new("postgresql://app@127.0.0.1/app"))?;
/// let users: i64 = pool
///     .run_interaction("count_users", |txn| {
///         async move { txn.query("SELECT count(*) FROM users", &[]).await?[0].try_get(0) }.boxed()
///     })
///     .await?;
/// # Ok(()) }
/// ```
pub struct PostgresPool {
    pool: Pool,
    config: PostgresConfig,
    safe_dsn: String,
}

/// Connection counts of a [`PostgresPool`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStatus {
    /// Connections open now.
    pub size: usize,
    /// Open connections not in use.
    pub available: usize,
    /// The configured maximum.
    pub max_size: usize,
}

impl std::fmt::Debug for PostgresPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresPool")
            .field("dsn", &self.safe_dsn)
            .field("status", &self.status())
            .finish()
    }
}

impl PostgresPool {
    /// A pool for `config`. Connections are opened on first use, so an unreachable
    /// server is reported by the first transaction (naming the DSN without its
    /// password).
    pub fn new(config: PostgresConfig) -> anyhow::Result<Self> {
        let safe_dsn = redact(&config.dsn);
        let pg_config: tokio_postgres::Config = config
            .dsn
            .parse()
            .map_err(|e| anyhow::anyhow!("invalid PostgreSQL DSN {safe_dsn}: {e}"))?;
        if config.max_size == 0 || config.max_attempts == 0 {
            anyhow::bail!("max_size and max_attempts must be at least 1");
        }
        let manager = Manager::from_config(
            pg_config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.max_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build a pool for {safe_dsn}: {e}"))?;
        Ok(Self {
            pool,
            config,
            safe_dsn,
        })
    }

    /// How many connections are open and idle.
    pub fn status(&self) -> PoolStatus {
        let status = self.pool.status();
        PoolStatus {
            size: status.size,
            available: status.available,
            max_size: status.max_size,
        }
    }

    // `&mut`: the closure is `Send` but not `Sync`, and this future must be `Send`.
    async fn attempt(
        &self,
        name: &'static str,
        options: InteractionOptions,
        func: &mut ErasedInteraction,
    ) -> ErasedResult {
        let waiting = std::time::Instant::now();
        let checkout = match self.config.checkout_timeout {
            Some(limit) => match crate::time::within(limit, self.pool.get()).await {
                Some(checkout) => checkout,
                None => {
                    return Err(anyhow::Error::new(CheckoutTimeout {
                        dsn: self.safe_dsn.clone(),
                        max_size: self.config.max_size,
                        waited: limit,
                    }))
                }
            },
            None => self.pool.get().await,
        };
        if let Some(bridge) = crate::scope::TaskScope::current_bridge() {
            if bridge.histograms().enabled {
                bridge
                    .histograms()
                    .checkout
                    .observe_duration(waiting.elapsed());
            }
        }
        let mut client = match checkout {
            Ok(client) => client,
            Err(err) => {
                let message = format!(
                    "cannot get a connection to {}: {}",
                    self.safe_dsn,
                    describe(&err)
                );
                return Err(match err {
                    deadpool_postgres::PoolError::Backend(_) => {
                        anyhow::Error::new(ServerUnreachable(message))
                    }
                    _ => anyhow::anyhow!(message),
                });
            }
        };
        let outcome = self.transaction(name, options, func, &mut client).await;
        if outcome.as_ref().is_err_and(connection_lost) {
            // Not back into the pool: the next user would find it dead too.
            drop(deadpool_postgres::Object::take(client));
        }
        outcome
    }

    async fn transaction(
        &self,
        name: &'static str,
        options: InteractionOptions,
        func: &mut ErasedInteraction,
        client: &mut deadpool_postgres::Client,
    ) -> ErasedResult {
        let txn = client
            .build_transaction()
            .isolation_level(self.config.isolation_level)
            .read_only(options.read_only)
            .start()
            .await?;
        if let Some(limit) = options.statement_timeout.or(self.config.statement_timeout) {
            // At least 1 ms: 0 would mean no timeout to the server.
            let ms = limit.as_millis().max(1);
            txn.batch_execute(&format!("SET LOCAL statement_timeout = {ms}"))
                .await?;
        }
        let calls = InTransactionCall::default();
        let mut transaction = PgTransaction { txn, calls: &calls };
        let result = calls.drive(name, func(&mut transaction)).await;
        let PgTransaction { txn, .. } = transaction;
        match result {
            Ok(value) => match txn.commit().await {
                Ok(()) => Ok(value),
                Err(err) if is_connection_loss(&err) => {
                    Err(anyhow::Error::new(err).context(CommitOutcomeUnknown {
                        dsn: self.safe_dsn.clone(),
                    }))
                }
                Err(err) => Err(err.into()),
            },
            Err(err) => {
                // Best effort: dropping the transaction rolls it back too.
                let _ = txn.rollback().await;
                Err(err)
            }
        }
    }
}

#[async_trait::async_trait]
impl super::DatabasePool for PostgresPool {
    async fn run_interaction_erased(
        &self,
        name: &'static str,
        func: ErasedInteraction,
    ) -> ErasedResult {
        self.run_interaction_erased_with(name, InteractionOptions::default(), func)
            .await
    }

    async fn run_interaction_erased_with(
        &self,
        name: &'static str,
        options: InteractionOptions,
        func: ErasedInteraction,
    ) -> ErasedResult {
        let (func, attempts) = super::counted(func);
        let started = std::time::Instant::now();
        let result = self.run_counted(name, options, func).await;
        let bridge = crate::scope::TaskScope::current_bridge();
        super::record_interaction(
            bridge.as_deref(),
            "postgres",
            name,
            &attempts,
            result.is_ok(),
            started,
        );
        result
    }
}

impl PostgresPool {
    /// The transaction, retried on serialization failures, deadlocks and (within
    /// `reconnect_timeout`) lost connections.
    async fn run_counted(
        &self,
        name: &'static str,
        options: InteractionOptions,
        mut func: ErasedInteraction,
    ) -> ErasedResult {
        let mut attempt = 1;
        // The crate's clock: a test on a memory reactor retries in virtual time.
        let started = crate::time::clock_now();
        loop {
            match self.attempt(name, options, &mut func).await {
                Err(err) if attempt < self.config.max_attempts && is_retryable(&err) => {
                    log::debug!(
                        "run_interaction({name}): attempt {attempt} failed, retrying: {err:#}"
                    );
                    crate::time::wait(backoff(self.config.retry_backoff, attempt)).await;
                    attempt += 1;
                }
                Err(err)
                    if connection_lost(&err)
                        && crate::time::clock_now() - started < self.config.reconnect_timeout =>
                {
                    log::warn!(
                        "run_interaction({name}): connection to {} lost or refused \
                         (attempt {attempt}), retrying on a new one: {err:#}",
                        self.safe_dsn
                    );
                    let delay =
                        backoff(self.config.retry_backoff, attempt).min(Duration::from_millis(250));
                    crate::time::wait(delay).await;
                    attempt += 1;
                }
                Err(err) => {
                    return Err(err.context(format!(
                        "run_interaction({name}) failed after {attempt} attempt(s)"
                    )))
                }
                ok => return ok,
            }
        }
    }
}

/// The connection dropped during COMMIT: the server may or may not have committed, so
/// the transaction is not run again.
#[derive(Debug)]
pub struct CommitOutcomeUnknown {
    dsn: String,
}

impl std::fmt::Display for CommitOutcomeUnknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the connection to {} was lost during COMMIT: the transaction may or may not \
             have committed, so it was not retried",
            self.dsn
        )
    }
}

impl std::error::Error for CommitOutcomeUnknown {}

/// The server closed or refused the connection before COMMIT (nothing committed):
/// safe to run again on a new connection. Not after an unknown COMMIT outcome.
fn connection_lost(err: &anyhow::Error) -> bool {
    // A context layer: found by anyhow's downcast, not by walking the chain.
    if err.downcast_ref::<CommitOutcomeUnknown>().is_some() {
        return false;
    }
    err.chain().any(|cause| {
        if let Some(pg) = cause.downcast_ref::<tokio_postgres::Error>() {
            return is_connection_loss(pg);
        }
        cause.is::<ServerUnreachable>()
    })
}

/// A new connection could not be made.
#[derive(Debug)]
struct ServerUnreachable(String);

impl std::fmt::Display for ServerUnreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServerUnreachable {}

/// A closed connection, a refused one, or the server shutting down (SQLSTATE class
/// 08, 57P01 to 57P03).
fn is_connection_loss(err: &tokio_postgres::Error) -> bool {
    if err.is_closed() {
        return true;
    }
    if let Some(code) = err.code() {
        let code = code.code();
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03");
    }
    // No SQLSTATE and not a server error: an I/O failure on the socket.
    err.as_db_error().is_none()
        && std::error::Error::source(err).is_some_and(|s| s.is::<std::io::Error>())
}

/// Serialization failures and deadlocks: the transaction can simply run again.
fn is_retryable(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::code)
            .is_some_and(|code| {
                *code == SqlState::T_R_SERIALIZATION_FAILURE
                    || *code == SqlState::T_R_DEADLOCK_DETECTED
            })
    })
}

fn backoff(base: Duration, attempt: u32) -> Duration {
    let exponential = base.saturating_mul(1 << (attempt - 1).min(10));
    // Jitter from the clock's low bits: enough to keep racing retries apart.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    exponential + exponential.mul_f64(f64::from(nanos % 1000) / 1000.0)
}

/// The DSN with any password replaced, for error messages and logs.
fn redact(dsn: &str) -> String {
    if let Some(scheme_end) = dsn.find("://") {
        let rest = &dsn[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            return format!("{}{user}{hidden}{}", &dsn[..scheme_end + 3], &rest[at..]);
        }
        return dsn.to_owned();
    }
    // key=value form
    dsn.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The innermost cause's message (deadpool and tokio-postgres wrap the interesting
/// one, such as "connection refused").
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = cause.source();
    }
    message
}

struct PgTransaction<'a> {
    txn: deadpool_postgres::Transaction<'a>,
    calls: &'a InTransactionCall,
}

impl PgTransaction<'_> {
    async fn prepare(
        &self,
        sql: &str,
        params: &[DbValue],
    ) -> anyhow::Result<tokio_postgres::Statement> {
        let placeholders = Placeholders::scan(sql);
        placeholders.check(params.len())?;
        Ok(self.txn.prepare_cached(&placeholders.numbered(sql)).await?)
    }
}

#[async_trait::async_trait]
impl Transaction for PgTransaction<'_> {
    async fn query(&mut self, sql: &str, params: &[DbValue]) -> anyhow::Result<Vec<DbRow>> {
        let calls = self.calls;
        calls
            .around(async {
                let statement = self.prepare(sql, params).await?;
                let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
                let rows = self.txn.query(&statement, &refs).await?;
                rows.iter().map(row_values).collect()
            })
            .await
    }

    async fn execute(&mut self, sql: &str, params: &[DbValue]) -> anyhow::Result<u64> {
        let calls = self.calls;
        calls
            .around(async {
                let statement = self.prepare(sql, params).await?;
                let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
                Ok(self.txn.execute(&statement, &refs).await?)
            })
            .await
    }
}

fn row_values(row: &Row) -> anyhow::Result<DbRow> {
    row.columns()
        .iter()
        .enumerate()
        .map(|(index, column)| {
            let ty = column.type_();
            let unmapped = || {
                anyhow::anyhow!(
                    "column {index} ({:?}) has PostgreSQL type {ty}, which has no DbValue mapping \
                     (cast it in SQL to an integer, float, text or bytea type)",
                    column.name()
                )
            };
            let value = match *ty {
                Type::BOOL => row.try_get::<_, Option<bool>>(index)?.map(DbValue::Bool),
                Type::INT2 => row.try_get::<_, Option<i16>>(index)?.map(DbValue::from),
                Type::INT4 => row.try_get::<_, Option<i32>>(index)?.map(DbValue::from),
                Type::INT8 => row.try_get::<_, Option<i64>>(index)?.map(DbValue::Int),
                Type::OID => row.try_get::<_, Option<u32>>(index)?.map(DbValue::from),
                Type::FLOAT4 => row.try_get::<_, Option<f32>>(index)?.map(DbValue::from),
                Type::FLOAT8 => row.try_get::<_, Option<f64>>(index)?.map(DbValue::Float),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    row.try_get::<_, Option<String>>(index)?.map(DbValue::Text)
                }
                Type::BYTEA => row
                    .try_get::<_, Option<Vec<u8>>>(index)?
                    .map(DbValue::Bytes),
                // What `SELECT pg_advisory_xact_lock(…)` and friends return.
                Type::VOID => None,
                // SUM() of bigints, for one, is NUMERIC: integral values map to Int.
                Type::NUMERIC => match row.try_get::<_, Option<NumericInt>>(index)? {
                    Some(NumericInt(Ok(i))) => Some(DbValue::Int(i)),
                    Some(NumericInt(Err(what))) => {
                        anyhow::bail!("column {index} ({:?}) holds {what}", column.name())
                    }
                    None => None,
                },
                _ => return Err(unmapped()),
            };
            Ok(value.unwrap_or(DbValue::Null))
        })
        .collect()
}

/// A NUMERIC decoded as an integer, or why it is not one.
struct NumericInt(Result<i64, &'static str>);

impl<'a> FromSql<'a> for NumericInt {
    /// The binary NUMERIC format: digit count, weight (of the first base-10000
    /// digit), sign, display scale, then the base-10000 digits.
    fn from_sql(
        _ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let word = |i: usize| -> Result<u16, Box<dyn std::error::Error + Sync + Send>> {
            raw.get(2 * i..2 * i + 2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .ok_or_else(|| "truncated NUMERIC value".into())
        };
        let (ndigits, weight, sign) = (word(0)? as usize, word(1)? as i16, word(2)?);
        const POSITIVE: u16 = 0x0000;
        const NEGATIVE: u16 = 0x4000;
        if sign != POSITIVE && sign != NEGATIVE {
            return Ok(Self(Err(
                "a NUMERIC NaN or infinity, which has no DbValue mapping",
            )));
        }
        let mut value: i128 = 0;
        for i in 0..ndigits {
            let digit = i128::from(word(4 + i)?);
            if i64::from(weight) - (i as i64) < 0 {
                if digit != 0 {
                    return Ok(Self(Err(
                        "a NUMERIC with a fractional part, which has no DbValue mapping \
                         (cast it to float8 or text in SQL)",
                    )));
                }
                continue;
            }
            value = value
                .checked_mul(10_000)
                .and_then(|v| v.checked_add(digit))
                .unwrap_or(i128::MAX);
        }
        for _ in ndigits as i64..=i64::from(weight) {
            value = value.checked_mul(10_000).unwrap_or(i128::MAX);
        }
        if sign == NEGATIVE {
            value = -value;
        }
        Ok(Self(i64::try_from(value).map_err(|_| {
            "a NUMERIC beyond the i64 range of DbValue::Int"
        })))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

/// Encodes a parameter for whatever type PostgreSQL inferred for its placeholder,
/// range-checking integers (an `i64` into an `int2` column, say).
impl ToSql for DbValue {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let narrow = |i: i64, what: &str| format!("{i} does not fit PostgreSQL type {what}");
        match (self, ty) {
            (DbValue::Null, _) => Ok(IsNull::Yes),
            (DbValue::Bool(b), &Type::BOOL) => b.to_sql(ty, out),
            (DbValue::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (DbValue::Int(i), &Type::INT4) => i32::try_from(*i)
                .map_err(|_| narrow(*i, "int4"))?
                .to_sql(ty, out),
            (DbValue::Int(i), &Type::INT2) => i16::try_from(*i)
                .map_err(|_| narrow(*i, "int2"))?
                .to_sql(ty, out),
            (DbValue::Int(i), &Type::OID) => u32::try_from(*i)
                .map_err(|_| narrow(*i, "oid"))?
                .to_sql(ty, out),
            (DbValue::Int(i), &Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (DbValue::Int(i), &Type::BOOL) => (*i != 0).to_sql(ty, out),
            (DbValue::Float(f), &Type::FLOAT8) => f.to_sql(ty, out),
            (DbValue::Float(f), &Type::FLOAT4) => (*f as f32).to_sql(ty, out),
            (DbValue::Text(s), _) if <&str as ToSql>::accepts(ty) => s.as_str().to_sql(ty, out),
            (DbValue::Bytes(b), &Type::BYTEA) => b.as_slice().to_sql(ty, out),
            (value, ty) => Err(format!(
                "cannot send a {} parameter as PostgreSQL type {ty}",
                value.kind()
            )
            .into()),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgresql://synapse:s3cret@127.0.0.1:5432/synapse?sslmode=disable"),
            "postgresql://synapse:***@127.0.0.1:5432/synapse?sslmode=disable"
        );
        assert_eq!(redact("postgresql://u@h/db"), "postgresql://u@h/db");
        assert_eq!(
            redact("host=h user=u password=x dbname=d"),
            "host=h user=u password=*** dbname=d"
        );
    }

    fn numeric(weight: i16, negative: bool, digits: &[u16]) -> Result<i64, &'static str> {
        let mut raw = Vec::new();
        for word in [
            digits.len() as u16,
            weight as u16,
            if negative { 0x4000 } else { 0 },
            0,
        ] {
            raw.extend_from_slice(&word.to_be_bytes());
        }
        for d in digits {
            raw.extend_from_slice(&d.to_be_bytes());
        }
        NumericInt::from_sql(&Type::NUMERIC, &raw).unwrap().0
    }

    #[test]
    fn numerics_decode_to_integers_or_say_why_not() {
        assert_eq!(numeric(0, false, &[42]), Ok(42));
        assert_eq!(numeric(1, true, &[12, 3456]), Ok(-123_456));
        assert_eq!(numeric(2, false, &[5]), Ok(500_000_000)); // trailing zero groups elided
        assert_eq!(numeric(0, false, &[7, 0]), Ok(7)); // 7.0000
        assert!(numeric(0, false, &[7, 5000])
            .unwrap_err()
            .contains("fractional"));
        assert!(numeric(5, false, &[9999, 9999, 9999, 9999, 9999, 9999])
            .unwrap_err()
            .contains("beyond"));
        assert_eq!(numeric(-1, false, &[]), Ok(0));
    }

    #[test]
    fn an_unknown_commit_outcome_is_never_retried() {
        let refused = anyhow::Error::new(ServerUnreachable("refused".into()));
        assert!(connection_lost(&refused));
        let unknown = refused.context(CommitOutcomeUnknown {
            dsn: "postgresql://h/db".into(),
        });
        assert!(!connection_lost(&unknown));
        assert!(!is_retryable(&unknown));
        assert!(format!("{unknown:#}").contains("may or may not have committed"));
    }

    #[test]
    fn backoff_grows_with_jitter_bounds() {
        let base = Duration::from_millis(4);
        for attempt in 1..6 {
            let d = backoff(base, attempt);
            let floor = base * (1 << (attempt - 1));
            assert!(d >= floor && d < floor * 2, "{attempt}: {d:?}");
        }
    }
}
