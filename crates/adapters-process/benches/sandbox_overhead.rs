//! Sandbox overhead: `true` through the process executor with the sandbox (user, PID, mount,
//! IPC and UTS namespaces, the mount layout, Landlock) beside the same executor with
//! `PROCESS_SANDBOX=off`, interleaved in one run.
//!
//! Run: `cargo bench -p adapters-process --bench sandbox_overhead`. Prints p50/p99 of both and
//! the difference; the target is a p50 overhead of at most 3 ms. With `SANDBOX_BENCH_HELPER`
//! set to another helper binary (the server's own `rdev-api`, or an older `rdev-sandbox`), that
//! one is measured too, interleaved in the same run, to compare helpers.
#![allow(clippy::expect_used, clippy::print_stdout, reason = "a benchmark binary: failures abort, results print")]

use std::time::{Duration, Instant};

use adapters_process::{ProcessConfig, ProcessExecutor, Sandbox, SandboxConfig};
use domain::command::{EnvMap, Termination};
use domain::ids::CommandId;
use domain::ports::{ExecRequest, Executor};
use domain::project::ProjectName;
use domain::testing::executor::RecordingSink;
use tokio_util::sync::CancellationToken;

const SAMPLES: usize = 200;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

async fn run_true(executor: &ProcessExecutor, project: &ProjectName) -> f64 {
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
    let result = executor.run(request, &sink, CancellationToken::new()).await;
    assert_eq!(result.termination, Termination::Exited(0), "{}", result.stderr.text());
    started.elapsed().as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("dir");
    let executor = |sandbox| {
        ProcessExecutor::new(ProcessConfig {
            workspaces_root: dir.path().join("workspaces"),
            kill_grace: Duration::from_secs(1),
            sandbox,
        })
    };
    let helper = env!("CARGO_BIN_EXE_rdev-sandbox").into();
    let sandboxed = executor(Sandbox::On(SandboxConfig::new(helper)));
    let unconfined = executor(Sandbox::Off);
    let other = std::env::var_os("SANDBOX_BENCH_HELPER").map(|h| executor(Sandbox::On(SandboxConfig::new(h.into()))));
    let project = ProjectName::parse("bench").expect("name");
    run_true(&sandboxed, &project).await; // warm-up: page cache, workspace
    if let Some(other) = &other {
        run_true(other, &project).await;
    }
    let (mut off, mut on, mut alt) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..SAMPLES {
        // Interleaved, so machine noise hits all alike.
        off.push(run_true(&unconfined, &project).await);
        on.push(run_true(&sandboxed, &project).await);
        if let Some(other) = &other {
            alt.push(run_true(other, &project).await);
        }
    }
    let (off_p50, off_p99) = summary(off);
    let (on_p50, on_p99) = summary(on);
    println!("`true` through the process executor, {SAMPLES} runs each:");
    println!("  baseline  PROCESS_SANDBOX=off:  p50 {off_p50:.2} ms  p99 {off_p99:.2} ms");
    println!("  measured  sandboxed:            p50 {on_p50:.2} ms  p99 {on_p99:.2} ms");
    println!("  overhead  p50 +{:.2} ms  p99 +{:.2} ms  (target p50 ≤ +3 ms)", on_p50 - off_p50, on_p99 - off_p99);
    if !alt.is_empty() {
        let (alt_p50, alt_p99) = summary(alt);
        println!(
            "  SANDBOX_BENCH_HELPER:           p50 {alt_p50:.2} ms  p99 {alt_p99:.2} ms  (overhead p50 +{:.2} ms)",
            alt_p50 - off_p50
        );
    }
}
