//! Criterion benches for the parts of the bridge that are pure Rust:
//! the wake protocol, the mailbox queue (push on one thread, drain on another),
//! `?` placeholder rewriting, and `DbValue` conversions.
//!
//! `cargo bench --bench rust_parts` (or `make bench`, which runs it too).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use pyo3_twisted::__private::WakeFlag;
use pyo3_twisted::db::{DbRow, DbRowExt, DbValue, Placeholders};

fn wake_protocol(c: &mut Criterion) {
    c.bench_function("wake_flag/request_wake+begin_drain", |b| {
        let flag = WakeFlag::new();
        b.iter(|| {
            black_box(flag.request_wake());
            flag.begin_drain();
        })
    });
    c.bench_function("wake_flag/request_wake (already pending)", |b| {
        let flag = WakeFlag::new();
        flag.request_wake();
        b.iter(|| black_box(flag.request_wake()))
    });
}

type Job = Box<dyn FnOnce(&mut u64) + Send>;

/// The mailbox's queue and flag: a producer thread pushes `n` boxed jobs (waking
/// the consumer when the flag says so); the consumer drains in batches.
fn mailbox(c: &mut Criterion) {
    let n = 10_000_u64;
    let mut group = c.benchmark_group("mailbox");
    group.throughput(Throughput::Elements(n));
    group.bench_function("push_and_drain_10k_jobs", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (tx, rx) = crossbeam_channel::unbounded::<Job>();
                let flag = Arc::new(WakeFlag::new());
                let (wake_tx, wake_rx) = crossbeam_channel::bounded::<()>(1);
                let producer_flag = Arc::clone(&flag);
                let start = Instant::now();
                let producer = std::thread::spawn(move || {
                    for i in 0..n {
                        tx.send(Box::new(move |sum: &mut u64| *sum += i)).unwrap();
                        if producer_flag.request_wake() {
                            let _ = wake_tx.try_send(());
                        }
                    }
                });
                let mut sum = 0_u64;
                let mut done = 0;
                while done < n {
                    if wake_rx.recv_timeout(Duration::from_millis(100)).is_err() && rx.is_empty() {
                        continue;
                    }
                    flag.begin_drain();
                    while let Ok(job) = rx.try_recv() {
                        job(&mut sum);
                        done += 1;
                    }
                }
                producer.join().unwrap();
                total += start.elapsed();
                assert_eq!(sum, n * (n - 1) / 2);
            }
            total
        })
    });
    group.finish();
}

fn placeholders(c: &mut Criterion) {
    let sql = "INSERT INTO feature_flags (user_id, feature, enabled) VALUES (?, ?, ?) \
               ON CONFLICT (user_id, feature) DO UPDATE SET enabled = EXCLUDED.enabled -- '?'";
    c.bench_function("placeholders/scan+numbered", |b| {
        b.iter(|| {
            let p = Placeholders::scan(black_box(sql));
            black_box(p.numbered(sql))
        })
    });
    c.bench_function("placeholders/scan+pyformat", |b| {
        b.iter(|| {
            let p = Placeholders::scan(black_box(sql));
            black_box(p.pyformat(sql))
        })
    });
}

fn db_values(c: &mut Criterion) {
    c.bench_function("db_value/params_from_rust", |b| {
        b.iter(|| {
            let user = black_box("@alice:example.org");
            let params: [DbValue; 4] = [
                user.into(),
                3_i64.into(),
                true.into(),
                None::<String>.into(),
            ];
            black_box(params)
        })
    });
    let row: DbRow = vec![
        DbValue::Text("dark_mode".into()),
        DbValue::Int(1),
        DbValue::Int(70_000),
        DbValue::Null,
        DbValue::Float(1.5),
        DbValue::Bytes(vec![1, 2, 3]),
    ];
    c.bench_function("db_value/try_get_row_of_6", |b| {
        b.iter(|| {
            let row = black_box(&row);
            let name: String = row.try_get(0).unwrap();
            let enabled: bool = row.try_get(1).unwrap();
            let n: u32 = row.try_get(2).unwrap();
            let missing: Option<i64> = row.try_get(3).unwrap();
            let f: f64 = row.try_get(4).unwrap();
            let bytes: Vec<u8> = row.try_get(5).unwrap();
            black_box((name, enabled, n, missing, f, bytes))
        })
    });
}

criterion_group!(benches, wake_protocol, mailbox, placeholders, db_values);
criterion_main!(benches);
