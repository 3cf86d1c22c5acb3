//! Exec overhead: `true` run through the kube adapter against kube-sim (HTTP + WebSocket exec,
//! the wrapper script, the status channel) beside a direct local spawn of `true` in the same run,
//! and where the difference goes.
//!
//! Run: `cargo bench -p adapters-kube --bench exec_overhead`. Every sample of every row is taken
//! in the same loop, interleaved, so machine noise hits them alike. Rows:
//! - the adapter with its ready-pod cache (the default) and with `pod_cache_ttl = 0` (a pod read
//!   before every command, as before the cache);
//! - the parts, timed from the client: a pod read alone; a bare kube-rs exec of the same wrapper
//!   argv, split into upgrade (HTTP request → 101), wrapper start (→ its control line on
//!   stderr), command + sweep + status (→ the channel-3 status) and close;
//! - the wrapper run as a local process the way kube-sim spawns it (what kube-sim's exec costs
//!   in processes, without HTTP or WebSocket), and a local spawn of `true`.
#![allow(clippy::expect_used, clippy::print_stdout, reason = "a benchmark binary: failures abort, results print")]

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use adapters_kube::{wrapper_argv, KubeBackend, KubeConfig};
use domain::command::EnvMap;
use domain::ids::CommandId;
use domain::pod::PodSpec;
use domain::ports::{ExecRequest, PodManager};
use domain::project::{ProjectName, Resources};
use domain::testing::executor::RecordingSink;
use k8s_openapi::api::core::v1::Pod;
use kube::api::AttachParams;
use kube::Api;
use kube_sim::{KubeSim, SimConfig};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

const SAMPLES: usize = 100;
const NAMESPACE: &str = "bench";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(samples: &[f64]) -> (f64, f64) {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    (percentile(&sorted, 0.5), percentile(&sorted, 0.99))
}

fn request(project: &ProjectName) -> ExecRequest {
    ExecRequest {
        command_id: CommandId::generate(),
        project: project.clone(),
        workdir: "/workspace".into(),
        argv: vec!["true".into()],
        env: EnvMap::default(),
        cwd: None,
        stdin: None,
        timeout: Duration::from_secs(30),
        max_output_bytes: 64 * 1024,
    }
}

async fn local_spawn() -> f64 {
    let started = Instant::now();
    let status = tokio::process::Command::new("true").status().await.expect("spawn true");
    assert!(status.success());
    ms(started.elapsed())
}

/// The wrapper as kube-sim starts it: own process group, piped outputs read to the end.
async fn local_wrapper(argv: &[String], cwd: &std::path::Path) -> f64 {
    let started = Instant::now();
    let out = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(cwd)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("spawn the wrapper");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ms(started.elapsed())
}

async fn through_kube(backend: &KubeBackend, project: &ProjectName) -> f64 {
    let sink = RecordingSink::new();
    let started = Instant::now();
    let result = backend.run(request(project), &sink, CancellationToken::new()).await;
    assert_eq!(result.termination, domain::command::Termination::Exited(0), "{}", result.stderr.text());
    ms(started.elapsed())
}

async fn pod_read(backend: &KubeBackend, project: &ProjectName) -> f64 {
    let started = Instant::now();
    assert!(backend.status(project).await.expect("pod read").ready);
    ms(started.elapsed())
}

/// Upgrade, wrapper start, command + status, close: cumulative milliseconds since the request.
async fn bare_exec(pods: &Api<Pod>, pod: &str, argv: Vec<String>) -> [f64; 4] {
    let params = AttachParams::default().container("main").stdout(true).stderr(true);
    let started = Instant::now();
    let mut process = pods.exec(pod, argv, &params).await.expect("exec");
    let upgraded = ms(started.elapsed());
    let mut stderr = process.stderr().expect("stderr");
    let status = process.take_status().expect("status");
    let mut line = [0u8; 256];
    let n = stderr.read(&mut line).await.expect("control line");
    assert!(line[..n].ends_with(b" ok\n"), "{}", String::from_utf8_lossy(&line[..n]));
    let wrapper_started = ms(started.elapsed());
    let status = status.await.expect("a status");
    assert_eq!(status.status.as_deref(), Some("Success"));
    let ended = ms(started.elapsed());
    drop(stderr);
    process.join().await.expect("join");
    [upgraded, wrapper_started, ended, ms(started.elapsed())]
}

fn row(label: &str, samples: &[f64]) {
    let (p50, p99) = summary(samples);
    println!("  {label:<52} p50 {p50:>6.2} ms  p99 {p99:>6.2} ms");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("dir");
    let mut sim_config = SimConfig::for_tests(dir.path().join("pods"));
    sim_config.ready_delay = Duration::from_millis(10);
    let sim = KubeSim::start(sim_config).await.expect("kube-sim");
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig, NAMESPACE).expect("kubeconfig");
    let state_root = dir.path().join("state").display().to_string();
    let config = KubeConfig { state_dir: state_root.clone(), ..KubeConfig::new(NAMESPACE) };
    let backend = KubeBackend::from_kubeconfig(Some(&kubeconfig), config.clone()).await.expect("backend");
    let uncached = KubeConfig { pod_cache_ttl: Duration::ZERO, ..config };
    let uncached = KubeBackend::from_kubeconfig(Some(&kubeconfig), uncached).await.expect("backend");
    let pods: Api<Pod> = Api::namespaced(backend.client().clone(), NAMESPACE);
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
    let pod = adapters_kube::pod_name(&project);
    let local_dir = dir.path().join("local");
    std::fs::create_dir_all(&local_dir).expect("local dir");
    // Warm-up: connections, the state root, page cache.
    through_kube(&backend, &project).await;
    through_kube(&uncached, &project).await;
    bare_exec(&pods, &pod, wrapper_argv(&request(&project), &state_root)).await;

    let (mut local, mut wrapper, mut cached, mut read_first, mut reads) = (vec![], vec![], vec![], vec![], vec![]);
    let mut phases: [Vec<f64>; 4] = Default::default();
    let pod_reads_before = sim.pod_reads();
    for _ in 0..SAMPLES {
        local.push(local_spawn().await);
        wrapper.push(local_wrapper(&wrapper_argv(&request(&project), &state_root), &local_dir).await);
        cached.push(through_kube(&backend, &project).await);
        read_first.push(through_kube(&uncached, &project).await);
        reads.push(pod_read(&backend, &project).await);
        let at = bare_exec(&pods, &pod, wrapper_argv(&request(&project), &state_root)).await;
        let mut last = 0.0;
        for (phase, t) in phases.iter_mut().zip(at) {
            phase.push(t - last);
            last = t;
        }
    }
    // Each round reads the pod twice on purpose (the uncached run and the timed read).
    let extra_reads = sim.pod_reads() - pod_reads_before - 2 * SAMPLES as u64;
    println!("`true`, {SAMPLES} runs each, interleaved:");
    row("baseline  direct local spawn of `true`", &local);
    row("measured  kube adapter → kube-sim (ready-pod cache)", &cached);
    row("          kube adapter, pod read before each run", &read_first);
    let (local_p50, cached_p50) = (summary(&local).0, summary(&cached).0);
    println!("  overhead p50 +{:.2} ms, ratio {:.1}", cached_p50 - local_p50, cached_p50 / local_p50);
    println!("  pod reads by the cached adapter in {SAMPLES} runs: {extra_reads}");
    println!("where it goes (client side; phases of a bare kube-rs exec of the same wrapper argv):");
    row("pod read (GET pod)", &reads);
    row("exec upgrade (HTTP request → 101 + first frame)", &phases[0]);
    row("wrapper start (→ its control line)", &phases[1]);
    row("command + sweep + exit + status frame", &phases[2]);
    row("close (join)", &phases[3]);
    let total: Vec<f64> = (0..SAMPLES).map(|i| phases.iter().map(|p| p[i]).sum()).collect();
    row("bare exec total", &total);
    println!("kube-sim's processes alone:");
    row("wrapper + `true` as a local process (as kube-sim spawns it)", &wrapper);
    sim.shutdown().await;
}
