//! libpq's conventions on real servers: a Unix-socket directory as `PGHOST`, the
//! `PG*` variables filling an empty DSN, a `.pgpass` entry, a missing password, and no
//! password in any error or log line.
//!
//! One test: it sets the process's environment (`HOME`, `PG*`), which every pool in
//! this binary reads, so nothing else runs beside it.
#![cfg(feature = "postgres")]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use pyo3_twisted::db::{DatabasePoolExt, DbRowExt, PostgresConfig, PostgresPool};

const PASSWORD: &str = "pw-secret-2";

fn var(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name}: `make test` starts the servers and sets it"))
}

/// Every log record of the process, formatted.
struct Capture(Arc<Mutex<Vec<String>>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if let Ok(mut lines) = self.0.lock() {
            lines.push(format!(
                "{} {}: {}",
                record.level(),
                record.target(),
                record.args()
            ));
        }
    }
    fn flush(&self) {}
}

fn clear_pg_env() {
    for (name, _) in std::env::vars() {
        if name.starts_with("PG") {
            std::env::remove_var(name);
        }
    }
}

async fn server_view(config: PostgresConfig) -> anyhow::Result<(String, bool)> {
    let pool = PostgresPool::new(config)?;
    pool.run_interaction("server_view", |txn| {
        async move {
            // A Unix-socket session has no server address.
            let rows = txn
                .query("SELECT current_user::text, inet_server_addr() IS NULL", &[])
                .await?;
            Ok((rows[0].try_get(0)?, rows[0].try_get(1)?))
        }
        .boxed()
    })
    .await
}

fn quick(dsn: &str) -> PostgresConfig {
    PostgresConfig {
        reconnect_timeout: Duration::ZERO,
        ..PostgresConfig::new(dsn)
    }
}

#[test]
fn libpq_conventions_on_real_servers() {
    let lines = Arc::new(Mutex::new(Vec::new()));
    log::set_boxed_logger(Box::new(Capture(lines.clone()))).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let socket_dir = var("PYO3_TWISTED_TEST_PG_SOCKET_DIR");
    let port = var("PYO3_TWISTED_TEST_PG_PORT");
    let tls_port = var("PYO3_TWISTED_TEST_PG_TLS_PORT");
    let home = std::env::temp_dir().join(format!("pyo3-twisted-home-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    std::env::set_var("HOME", &home);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut errors = Vec::new();

    // An empty DSN: everything from PG*, through the socket directory.
    clear_pg_env();
    std::env::set_var("PGHOST", &socket_dir);
    std::env::set_var("PGPORT", &port);
    std::env::set_var("PGUSER", "postgres");
    std::env::set_var("PGDATABASE", "pyo3_twisted_test");
    let view = runtime.block_on(server_view(quick(""))).unwrap();
    assert_eq!(
        view,
        ("postgres".into(), true),
        "a Unix-socket session as postgres"
    );
    // The same socket given as a key=value host.
    clear_pg_env();
    let view = runtime
        .block_on(server_view(quick(&format!(
            "host={socket_dir} port={port} user=postgres dbname=pyo3_twisted_test"
        ))))
        .unwrap();
    assert_eq!(view, ("postgres".into(), true));

    // pw_user needs a password (scram) on the TLS server, over TLS or not.
    let pw_dsn = format!("postgresql://pw_user@127.0.0.1:{tls_port}/pyo3_twisted_test");

    // No password anywhere: a clear error, no retries.
    let err = runtime.block_on(server_view(quick(&pw_dsn))).unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("asks user \"pw_user\" for a password"),
        "{message}"
    );
    assert!(
        message.contains("PGPASSWORD") && message.contains(".pgpass"),
        "{message}"
    );
    errors.push(message);

    // ~/.pgpass, as libpq reads it: 0600, first match wins.
    let pgpass = home.join(".pgpass");
    std::fs::write(
        &pgpass,
        format!("127.0.0.1:{tls_port}:other_db:pw_user:nope\n127.0.0.1:{tls_port}:*:pw_user:{PASSWORD}\n"),
    )
    .unwrap();
    set_mode(&pgpass, 0o600);
    assert_eq!(
        runtime.block_on(server_view(quick(&pw_dsn))).unwrap(),
        ("pw_user".into(), false)
    );
    // PGSSLMODE and PGSSLROOTCERT reach the same connection.
    std::env::set_var("PGSSLMODE", "verify-full");
    std::env::set_var(
        "PGSSLROOTCERT",
        PathBuf::from(var("PYO3_TWISTED_TEST_PG_TLS_DIR")).join("certs/ca.crt"),
    );
    let pool = PostgresPool::new(quick(&pw_dsn)).unwrap();
    let ssl: bool = runtime
        .block_on(pool.run_interaction("ssl", |txn| {
            async move {
                txn.query(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await?[0]
                    .try_get(0)
            }
            .boxed()
        }))
        .unwrap();
    assert!(ssl, "PGSSLMODE=verify-full encrypted the connection");
    std::env::remove_var("PGSSLMODE");
    std::env::remove_var("PGSSLROOTCERT");

    // A password file others can read is not used (libpq's rule), so: no password.
    set_mode(&pgpass, 0o644);
    let message = format!(
        "{:#}",
        runtime.block_on(server_view(quick(&pw_dsn))).unwrap_err()
    );
    assert!(message.contains("for a password"), "{message}");
    errors.push(message);
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("group or world access")),
        "the ignored file is named in a warning"
    );

    // PGPASSWORD, right and wrong.
    std::env::set_var("PGPASSWORD", PASSWORD);
    assert_eq!(
        runtime.block_on(server_view(quick(&pw_dsn))).unwrap().0,
        "pw_user"
    );
    std::env::set_var("PGPASSWORD", "wrong-password-3");
    let message = format!(
        "{:#}",
        runtime.block_on(server_view(quick(&pw_dsn))).unwrap_err()
    );
    assert!(
        message.contains("password authentication failed"),
        "{message}"
    );
    errors.push(message);
    std::env::remove_var("PGPASSWORD");

    // The password in the DSN: redacted in errors (a wrong database, say).
    let message = format!(
        "{:#}",
        runtime
            .block_on(server_view(quick(&format!(
                "postgresql://pw_user:{PASSWORD}@127.0.0.1:{tls_port}/no_such_db"
            ))))
            .unwrap_err()
    );
    assert!(message.contains("no_such_db"), "{message}");
    assert!(message.contains("pw_user:***@"), "{message}");
    errors.push(message);

    // connect_timeout covers the whole connection: a server that accepts and never
    // answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let started = Instant::now();
    let message = format!(
        "{:#}",
        runtime
            .block_on(server_view(PostgresConfig {
                connect_timeout: Some(Duration::from_millis(300)),
                ..quick(&format!("postgresql://u@127.0.0.1:{silent_port}/db"))
            }))
            .unwrap_err()
    );
    assert!(message.contains("connect_timeout"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(silent);

    let logged = lines.lock().unwrap().join("\n");
    for secret in [PASSWORD, "wrong-password-3"] {
        assert!(!logged.contains(secret), "a password was logged:\n{logged}");
        for error in &errors {
            assert!(!error.contains(secret), "a password in an error: {error}");
        }
    }
    let _ = std::fs::remove_dir_all(home);
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
