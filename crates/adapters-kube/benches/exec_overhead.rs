//! Exec overhead: `true` run through the kube adapter against kube-sim (HTTP + WebSocket exec,
//! the wrapper script, the status channel) beside a direct local spawn of `true` in the same run.
//!
//! Run: `cargo bench -p adapters-kube --bench exec_overhead`. Prints p50/p99 of both and the ratio.
#![allow(clippy::expect_used, clippy::print_stdout, reason = "a benchmark binary: failures abort, results print")]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use adapters_kube::{KubeBackend, KubeConfig};
use domain::command::EnvMap;
use domain::ids::CommandId;
use domain::pod::PodSpec;
use domain::ports::{ExecRequest, PodManager};
use domain::project::{ProjectName, Resources};
use domain::testing::executor::RecordingSink;
use kube_sim::{KubeSim, SimConfig};
use tokio_util::sync::CancellationToken;

const SAMPLES: usize = 100;
const NAMESPACE: &str = "bench";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

async fn local_spawn() -> f64 {
    let started = Instant::now();
    let status = tokio::process::Command::new("true").status().await.expect("spawn true");
    assert!(status.success());
    started.elapsed().as_secs_f64() * 1000.0
}

async fn through_kube(backend: &KubeBackend, project: &ProjectName) -> f64 {
    let request = ExecRequest {
        command_id: CommandId::generate(),
        project: project.clone(),
        workdir: "/workspace".into(),
        argv: vec!["true".into()],
        env: EnvMap::default(),
        cwd: None,
        stdin: None,
        timeout: Duration::from_secs(30),
        max_output_bytes: 64 * 1024,
    };
    let sink = RecordingSink::new();
    let started = Instant::now();
    let result = backend.run(request, &sink, CancellationToken::new()).await;
    assert_eq!(result.termination, domain::command::Termination::Exited(0), "{}", result.stderr.text());
    started.elapsed().as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("dir");
    let mut sim_config = SimConfig::for_tests(dir.path().join("pods"));
    sim_config.ready_delay = Duration::from_millis(10);
    let sim = KubeSim::start(sim_config).await.expect("kube-sim");
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig, NAMESPACE).expect("kubeconfig");
    let config = KubeConfig { state_dir: dir.path().join("state").display().to_string(), ..KubeConfig::new(NAMESPACE) };
    let backend = KubeBackend::from_kubeconfig(Some(&kubeconfig), config).await.expect("backend");
    let project = ProjectName::parse("bench").expect("name");
    let spec = PodSpec {
        project: project.clone(),
        image: "busybox:1.36".into(),
        workdir: "/workspace".into(),
        env: EnvMap::parse(BTreeMap::new()).expect("env"),
        resources: Resources::default(),
    };
    backend.start(&spec).await.expect("start pod");
    assert!(backend.wait_ready(&project, Duration::from_secs(10)).await.expect("ready").ready);
    through_kube(&backend, &project).await; // warm-up: connections
    let (mut local, mut kube) = (Vec::new(), Vec::new());
    for _ in 0..SAMPLES {
        // Interleaved, so machine noise hits both alike.
        local.push(local_spawn().await);
        kube.push(through_kube(&backend, &project).await);
    }
    let (local_p50, local_p99) = summary(local);
    let (kube_p50, kube_p99) = summary(kube);
    println!("`true`, {SAMPLES} runs each:");
    println!("  baseline  direct local spawn:            p50 {local_p50:.2} ms  p99 {local_p99:.2} ms");
    println!("  measured  kube adapter → kube-sim exec:  p50 {kube_p50:.2} ms  p99 {kube_p99:.2} ms");
    println!("  ratio p50 {:.1}", kube_p50 / local_p50);
    sim.shutdown().await;
}
