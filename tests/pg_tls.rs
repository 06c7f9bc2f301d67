//! The native pool's TLS against a real server with `ssl=on`: a CA, a server
//! certificate for localhost/127.0.0.1 and a client certificate, all made by `make
//! test` (scripts/test-postgres.sh start-tls), and pg_hba rules per user:
//! `tls_user` over TLS only, with a password; `cert_user` by client certificate;
//! `postgres` trusted, for the checks.
#![cfg(feature = "postgres")]

mod common;

use common::tokio_runtime as runtime;

use std::path::PathBuf;
use std::time::Duration;

use futures_util::FutureExt;
use pyo3_twisted::db::{DatabasePoolExt, DbRowExt, PostgresConfig, PostgresPool};

fn tls_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("PYO3_TWISTED_TEST_PG_TLS_DIR")
            .expect("PYO3_TWISTED_TEST_PG_TLS_DIR: `make test` starts the TLS server and sets it"),
    )
}

fn port() -> String {
    std::env::var("PYO3_TWISTED_TEST_PG_TLS_PORT").expect("PYO3_TWISTED_TEST_PG_TLS_PORT")
}

fn cert(name: &str) -> String {
    tls_dir().join("certs").join(name).display().to_string()
}

fn dsn(user: &str, params: &str) -> String {
    let password = match user {
        "tls_user" => ":tls-secret-1",
        _ => "",
    };
    format!(
        "postgresql://{user}{password}@127.0.0.1:{}/pyo3_twisted_test?{params}",
        port()
    )
}

fn pool(dsn: String) -> PostgresPool {
    PostgresPool::new(PostgresConfig {
        // A refused connection is not a restart: fail at once.
        reconnect_timeout: Duration::ZERO,
        ..PostgresConfig::new(dsn)
    })
    .unwrap()
}

/// Who the server says we are, and whether this connection is encrypted.
async fn whoami(pool: &PostgresPool) -> anyhow::Result<(String, bool)> {
    pool.run_interaction("whoami", |txn| {
        async move {
            let rows = txn
                .query(
                    "SELECT current_user::text, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await?;
            Ok((rows[0].try_get(0)?, rows[0].try_get(1)?))
        }
        .boxed()
    })
    .await
}

fn connects(dsn: String) -> (String, bool) {
    runtime()
        .block_on(whoami(&pool(dsn.clone())))
        .unwrap_or_else(|e| panic!("{dsn}: {e:#}"))
}

fn fails(dsn: String) -> String {
    let err = runtime()
        .block_on(whoami(&pool(dsn.clone())))
        .expect_err(&dsn);
    format!("{err:#}")
}

#[test]
fn require_connects_encrypted_without_checking_the_certificate() {
    assert_eq!(
        connects(dsn("tls_user", "sslmode=require")),
        ("tls_user".into(), true)
    );
}

#[test]
fn verify_ca_and_verify_full_connect_with_the_right_root() {
    let ca = cert("ca.crt");
    assert_eq!(
        connects(dsn(
            "tls_user",
            &format!("sslmode=verify-ca&sslrootcert={ca}")
        )),
        ("tls_user".into(), true)
    );
    // The certificate names localhost and 127.0.0.1.
    assert_eq!(
        connects(dsn(
            "tls_user",
            &format!("sslmode=verify-full&sslrootcert={ca}")
        )),
        ("tls_user".into(), true)
    );
    let by_name = format!(
        "host=localhost port={} user=tls_user password=tls-secret-1 dbname=pyo3_twisted_test \
         sslmode=verify-full sslrootcert={ca}",
        port()
    );
    assert_eq!(connects(by_name), ("tls_user".into(), true));
}

#[test]
fn the_wrong_root_or_the_wrong_host_name_is_refused_clearly_and_not_retried() {
    let wrong_root = fails(dsn(
        "tls_user",
        &format!("sslmode=verify-ca&sslrootcert={}", cert("other-ca.crt")),
    ));
    assert!(wrong_root.contains("UnknownIssuer"), "{wrong_root}");
    assert!(wrong_root.contains("sslmode=verify-ca"), "{wrong_root}");
    assert!(wrong_root.contains("after 1 attempt(s)"), "{wrong_root}");

    // Connect to 127.0.0.1, but check the certificate against another name.
    let wrong_host = format!(
        "host=wrong.example hostaddr=127.0.0.1 port={} user=tls_user password=tls-secret-1 \
         dbname=pyo3_twisted_test sslmode=verify-full sslrootcert={}",
        port(),
        cert("ca.crt")
    );
    let message = fails(wrong_host.clone());
    assert!(
        message.contains("not valid for name \"wrong.example\""),
        "{message}"
    );
    assert!(message.contains("after 1 attempt(s)"), "{message}");
    assert!(!message.contains("tls-secret-1"), "{message}");
    // verify-ca does not check the name: the same target connects.
    assert_eq!(
        connects(wrong_host.replace("verify-full", "verify-ca")),
        ("tls_user".into(), true)
    );
}

#[test]
fn disable_is_refused_where_the_server_requires_tls_and_allow_falls_back_to_it() {
    let message = fails(dsn("tls_user", "sslmode=disable"));
    assert!(message.contains("no encryption"), "{message}");
    assert!(
        message.contains("the server requires TLS for this user"),
        "{message}"
    );
    // allow: plaintext first, refused, then TLS.
    assert_eq!(
        connects(dsn("tls_user", "sslmode=allow")),
        ("tls_user".into(), true)
    );
}

#[test]
fn prefer_uses_tls_when_offered_and_is_the_default() {
    assert_eq!(
        connects(dsn("postgres", "sslmode=prefer")),
        ("postgres".into(), true)
    );
    assert_eq!(connects(dsn("postgres", "")), ("postgres".into(), true));
    assert_eq!(
        connects(dsn("postgres", "sslmode=disable")),
        ("postgres".into(), false)
    );
}

#[test]
fn client_certificates_authenticate() {
    let with_cert = dsn(
        "cert_user",
        &format!(
            "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
            cert("ca.crt"),
            cert("client.crt"),
            cert("client.key")
        ),
    );
    assert_eq!(connects(with_cert), ("cert_user".into(), true));
    // HOME has no ~/.postgresql/postgresql.crt for this process: no certificate, no entry.
    let without = fails(dsn("cert_user", "sslmode=require"));
    assert!(without.contains("certificate"), "{without}");
}

#[test]
fn bad_tls_files_fail_at_pool_creation() {
    let err = PostgresPool::new(PostgresConfig::new(dsn(
        "tls_user",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.crt",
    )))
    .unwrap_err()
    .to_string();
    assert!(err.contains("/nonexistent/ca.crt"), "{err}");
    assert!(!err.contains("tls-secret-1"), "{err}");
    let err = PostgresPool::new(PostgresConfig::new(dsn(
        "cert_user",
        &format!(
            "sslmode=require&sslcert={}&sslkey={}",
            cert("client.crt"),
            cert("ca.crt")
        ),
    )))
    .unwrap_err()
    .to_string();
    assert!(err.contains("sslkey"), "{err}");
}

#[test]
fn pg_stat_ssl_shows_every_connection_of_the_pool_encrypted() {
    runtime().block_on(async {
        let mut config = PostgresConfig::new(dsn(
            "tls_user",
            &format!(
                "sslmode=verify-full&sslrootcert={}&application_name=ssl-census",
                cert("ca.crt")
            ),
        ));
        config.max_size = 4;
        config.reconnect_timeout = Duration::ZERO;
        let pool = std::sync::Arc::new(PostgresPool::new(config).unwrap());
        // Four checkouts at once on an empty pool: it opens a connection for each.
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { whoami(&pool).await.unwrap() })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap().1);
        }
        let size = pool.status().size as i64;
        assert!(size >= 1);
        let admin = pool_for_admin();
        let counts: (i64, i64) = admin
            .run_interaction("ssl_counts", |txn| {
                async move {
                    let rows = txn
                        .query(
                            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
                             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                             WHERE a.application_name = 'ssl-census'",
                            &[],
                        )
                        .await?;
                    Ok((rows[0].try_get(0)?, rows[0].try_get(1)?))
                }
                .boxed()
            })
            .await
            .unwrap();
        assert_eq!(counts, (size, 0), "every open connection of the pool is encrypted");
    });
}

fn pool_for_admin() -> PostgresPool {
    pool(dsn("postgres", "sslmode=disable"))
}
