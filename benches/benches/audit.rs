//! The audit trail and image integrity, side by side with their references:
//! - `audit_append/{batch,always}`: records per second through dermgate's
//!   writer (hash chain, JSON, group commit, fsync), typical decision records
//!   from 64 concurrent requests (50,000 per iteration in batch mode, 2,000
//!   with `always`), until every one is on disk; next to `audit_append/reference_fsync_each` (a bare append + fsync
//!   per line, what a naive "always" costs) and
//!   `audit_append/reference_one_fsync` (the same bytes written once and
//!   fsynced once: the floor).
//! - `integrity_sha256/1GiB`: SHA-256 over 1 GiB in the 64 KiB chunks a
//!   streamed body arrives in, next to `integrity_sha256/reference_copy`
//!   (touching the same chunks without hashing): the streaming overhead.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dermgate_proxy::audit::{Audit, Record, SyncMode};

const PER_ITER: u64 = 2000;
const CONCURRENCY: u64 = 64;

fn record(i: u64) -> Record {
    let mut r = Record::new("decision");
    r.id = Some(format!("{i:016x}"));
    r.sub = Some("dr.lee@example-derm.com".into());
    r.sid = Some("s-6f2b9c1e0d".into());
    r.src = Some("203.0.113.7".into());
    r.host = Some("ehr.example-derm.com".into());
    r.route = Some("ehr".into());
    r.method = Some("GET".into());
    r.path = Some("/patients/8812/chart".into());
    r.proto = Some("h2");
    r.tls = Some("TLSv1.3");
    r.decision = Some("allow");
    r.rule = Some("clinicians-ehr".into());
    r.policy = Some("3f9a2c1b".into());
    r.auth = Some("session");
    r
}

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dermgate-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn audit_append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("audit_append");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    // Batch mode commits every 50 ms, so an iteration there is 50,000 records:
    // long enough that the number is throughput, not the commit interval.
    for (name, mode, per_iter) in [
        ("batch", SyncMode::Batch, 50_000),
        ("always", SyncMode::Always, PER_ITER),
    ] {
        g.throughput(Throughput::Elements(per_iter));
        let d = dir(name);
        let key = dermgate_proxy::audit::load_or_create_key(&d.join("keys")).unwrap();
        let audit = Arc::new(
            rt.block_on(async { Audit::start(&d.join("audit.jsonl"), mode, key).unwrap() }),
        );
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let mut tasks = tokio::task::JoinSet::new();
                        for t in 0..CONCURRENCY {
                            let a = audit.clone();
                            tasks.spawn(async move {
                                let n = per_iter / CONCURRENCY;
                                for i in 0..n {
                                    let r = record(t * n + i);
                                    // Every record durable before the iteration ends.
                                    if i + 1 == n || mode == SyncMode::Always {
                                        assert!(a.append_durable(r).await);
                                    } else {
                                        a.record(r);
                                    }
                                }
                            });
                        }
                        while tasks.join_next().await.is_some() {}
                    }
                    start.elapsed()
                })
            })
        });
        let _ = std::fs::remove_dir_all(&d);
    }
    g.throughput(Throughput::Elements(PER_ITER));
    // References: the same line bytes, without chain or JSON work.
    let line = {
        let mut v = serde_json::to_vec(&record(1)).unwrap();
        v.push(b'\n');
        v
    };
    let d = dir("reference");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(d.join("ref.jsonl"))
        .unwrap();
    g.bench_function("reference_fsync_each", |b| {
        b.iter(|| {
            for _ in 0..PER_ITER {
                f.write_all(&line).unwrap();
                f.sync_data().unwrap();
            }
        })
    });
    g.bench_function("reference_one_fsync", |b| {
        b.iter(|| {
            let mut buf = Vec::with_capacity(line.len() * PER_ITER as usize);
            for _ in 0..PER_ITER {
                buf.extend_from_slice(&line);
            }
            f.write_all(&buf).unwrap();
            f.sync_data().unwrap();
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&d);
}

fn integrity_sha256(c: &mut Criterion) {
    const CHUNK: usize = 64 << 10;
    const TOTAL: usize = 1 << 30;
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i * 31 % 251) as u8).collect();
    let mut g = c.benchmark_group("integrity_sha256");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("1GiB", |b| {
        b.iter(|| {
            let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
            for _ in 0..TOTAL / CHUNK {
                ctx.update(black_box(&chunk));
            }
            black_box(ctx.finish())
        })
    });
    g.bench_function("reference_copy", |b| {
        let mut out = vec![0u8; CHUNK];
        b.iter(|| {
            for _ in 0..TOTAL / CHUNK {
                out.copy_from_slice(black_box(&chunk));
                black_box(&out);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, audit_append, integrity_sha256);
criterion_main!(benches);
