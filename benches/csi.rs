//! CSI benchmark (release): `CreateVolume` + `DeleteVolume` pairs per second
//! through the plugin's gRPC socket at concurrency 1 and 16 on the dir
//! provider, next to the HTTP API doing the same (create + destroy) in the
//! same run, on the same manager, so the cost of each front end shows.
//!
//! Run: `cargo bench --bench csi` (env `BENCH_DIR` picks the disk, `BENCH_OPS`
//! the pairs per case).

use std::collections::BTreeMap;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use volmgr::agent::client::Client;
use volmgr::agent::{Agent, ServeOptions};
use volmgr::csi::client::CsiClients;
use volmgr::csi::proto::{
    CreateVolumeRequest, DeleteVolumeRequest, VolumeCapability, volume_capability,
};
use volmgr::csi::{CsiOptions, CsiServer};
use volmgr::manager::{Manager, ManagerConfig};

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

fn capability() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(
            volume_capability::MountVolume::default(),
        )),
        access_mode: Some(volume_capability::AccessMode {
            mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

/// Runs `pairs` create+delete pairs split over `concurrency` workers; pairs/s.
async fn measure<F, Fut>(concurrency: usize, pairs: usize, pair: F) -> f64
where
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let pair = pair.clone();
            let n = pairs / concurrency;
            tokio::spawn(async move {
                for i in 0..n {
                    pair(format!("w{t}-{i}")).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (pairs / concurrency * concurrency) as f64 / started.elapsed().as_secs_f64()
}

async fn run() {
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let pairs: usize = std::env::var("BENCH_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1600);
    let dir = tempfile::tempdir_in(&base).unwrap();
    let root = dir.path().join("volumes").to_string_lossy().into_owned();
    let config = ManagerConfig {
        default_provider: Some(Box::new(move || {
            Ok(("dir".into(), BTreeMap::from([("root".into(), root)])))
        })),
        ..ManagerConfig::default()
    };
    let manager = Manager::open(dir.path().join("state"), config)
        .await
        .unwrap();

    let stop = CancellationToken::new();
    let socket = dir.path().join("csi.sock");
    let csi = CsiServer::new(CsiOptions::new("bench-node").unwrap());
    csi.ready(manager.clone()).unwrap();
    let listener = CsiServer::bind(&socket).unwrap();
    let csi_task = tokio::spawn(csi.serve(listener, stop.clone().cancelled_owned()));

    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", http.local_addr().unwrap());
    // The HTTP API's auth is on, as in production: the client presents the token.
    let token = "csi-bench-token".to_owned();
    let agent = Agent::new(ServeOptions {
        token: Some(token.clone()),
        ..ServeOptions::default()
    })
    .unwrap();
    agent.ready(manager).unwrap();
    let http_task = tokio::spawn(agent.serve(http, stop.clone().cancelled_owned()));

    let grpc = CsiClients::connect(&socket).await.unwrap();
    let client = Client::new(&url, Some(token)).unwrap();
    println!("csi bench: {pairs} create+delete pairs per case, dir provider under {base}");
    println!(
        "{:>11} {:>14} {:>14}",
        "concurrency", "gRPC pairs/s", "HTTP pairs/s"
    );
    for concurrency in [1usize, 16] {
        let g = grpc.clone();
        let grpc_rate = measure(concurrency, pairs, move |name: String| {
            let mut c = g.controller.clone();
            async move {
                let v = c
                    .create_volume(CreateVolumeRequest {
                        name: format!("g{concurrency}-{name}"),
                        volume_capabilities: vec![capability()],
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .volume
                    .unwrap();
                c.delete_volume(DeleteVolumeRequest {
                    volume_id: v.volume_id,
                    ..Default::default()
                })
                .await
                .unwrap();
            }
        })
        .await;
        let h = client.clone();
        let http_rate = measure(concurrency, pairs, move |name: String| {
            let h = h.clone();
            async move {
                let id = format!("h{concurrency}-{name}");
                h.create_volume("default", Some(&id), BTreeMap::new())
                    .await
                    .unwrap();
                h.destroy(&id).await.unwrap();
            }
        })
        .await;
        println!("{concurrency:>11} {grpc_rate:>14.0} {http_rate:>14.0}");
    }
    stop.cancel();
    csi_task.await.unwrap().unwrap();
    http_task.await.unwrap().unwrap();
}
