//! Manager benchmark (release): create+destroy operations per second on the
//! directory provider at concurrency 1 and 16, the share of each operation's
//! wall time spent awaiting durable journal appends, and fdatasyncs per
//! operation (group commit at work when it falls well below 2).
//!
//! Run: `cargo bench --bench manager` (env BENCH_DIR picks the disk,
//! BENCH_OPS the operations per case).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use volmgr::manager::{Manager, ManagerConfig};
use volmgr::state::Meta;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let pairs: usize = std::env::var("BENCH_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    println!("manager bench: {pairs} create+destroy pairs per case, state dir under {base}");
    println!(
        "{:>11} {:>10} {:>12} {:>14} {:>14}",
        "concurrency", "ops/s", "syncs/op", "journal share", "op latency us"
    );
    for concurrency in [1usize, 16] {
        let dir = tempfile::tempdir_in(&base).unwrap();
        let root = dir.path().join("volumes").to_string_lossy().into_owned();
        let config = ManagerConfig {
            default_provider: Some(Box::new(move || {
                Ok(("dir".into(), BTreeMap::from([("root".into(), root)])))
            })),
            ..ManagerConfig::default()
        };
        let m = Arc::new(Manager::open(dir.path(), config).await.unwrap());
        let before = m.stats();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..concurrency {
            let m = m.clone();
            let n = pairs / concurrency;
            tasks.push(tokio::spawn(async move {
                for i in 0..n {
                    let id = format!("b{t}-{i}");
                    m.create_volume("default", Some(&id), Meta::new())
                        .await
                        .unwrap();
                    m.destroy_volume(&id).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        let after = m.stats();
        let ops = (after.operations - before.operations) as f64;
        let syncs = (after.syncs - before.syncs) as f64;
        let share = (after.journal_wait_ns - before.journal_wait_ns) as f64
            / (after.operation_ns - before.operation_ns).max(1) as f64;
        let latency_us = (after.operation_ns - before.operation_ns) as f64 / ops / 1000.0;
        println!(
            "{concurrency:>11} {:>10.0} {:>12.2} {:>13.1}% {:>14.0}",
            ops / elapsed,
            syncs / ops,
            share * 100.0,
            latency_us
        );
        Arc::try_unwrap(m).unwrap().close().await;
    }
}
