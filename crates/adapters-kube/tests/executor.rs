//! The kube executor against kube-sim over real HTTP and WebSocket: the shared executor contract,
//! then what only pods do (pod gone, OOM kill, a missing exit status, an unreachable API).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use adapters_kube::{KubeBackend, KubeConfig, KubeError};
use common::{argv, script, Harness};
use domain::command::{CommandStatus, EnvMap, Termination};
use domain::output::OutputStream;
use domain::ports::{ExecRequest, Executor, PodManager};
use domain::testing::executor::executor_contract;
use domain::testing::project_name;
use domain::DomainError;
use kube_sim::Faults;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread")]
async fn kube_backend_meets_the_executor_contract() {
    let h = Harness::start().await;
    h.ready_pod("contract").await;
    executor_contract(&h.backend, &project_name("contract")).await;
    assert!(h.processes("contract").await.is_empty(), "nothing left running in the pod");
}

#[tokio::test(flavor = "multi_thread")]
async fn argv_script_env_cwd_and_stdin_reach_the_pod() {
    let h = Harness::start().await;
    h.ready_pod("shape").await;
    std::fs::create_dir_all(h.pod_dir("shape").join("src dir")).unwrap();

    let odd = ["it's", "two  spaces", "\"q\"", "$HOME", "line\nbreak"];
    let mut cmd = vec!["printf", "<%s>"];
    cmd.extend(odd);
    let (result, _) = h.run(argv("shape", &cmd)).await;
    assert_eq!(result.termination, Termination::Exited(0), "{}", result.stderr.text());
    assert_eq!(result.stdout.text(), odd.iter().map(|a| format!("<{a}>")).collect::<String>());

    let env = EnvMap::parse(BTreeMap::from([("GREETING".to_owned(), "hello 'pod' = $x".to_owned())])).unwrap();
    let request = ExecRequest {
        env,
        cwd: Some("src dir".into()),
        stdin: Some(b"from stdin".to_vec()),
        ..script("shape", "pwd; echo \"$GREETING|$POD_LEVEL\"; cat; echo oops >&2; exit 1")
    };
    let (result, sink) = h.run(request).await;
    let pwd = h.pod_dir("shape").join("src dir").canonicalize().unwrap();
    assert_eq!(result.termination, Termination::Exited(1));
    assert_eq!(result.stdout.text(), format!("{}\nhello 'pod' = $x|from-pod\nfrom stdin", pwd.display()));
    assert_eq!(result.stderr.text(), "oops\n", "the wrapper's control line never reaches the client");
    assert_eq!(sink.text(OutputStream::Stderr), "oops\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_0_1_and_137_arrive_from_the_status_channel() {
    let h = Harness::start().await;
    h.ready_pod("codes").await;
    for (text, code) in [("exit 0", 0), ("exit 1", 1), ("kill -9 $$", 137)] {
        let (result, _) = h.run(script("codes", text)).await;
        assert_eq!(result.termination, Termination::Exited(code), "{text}");
    }
}

/// Starts a command whose background child would write `marker` after 1 s.
fn marker_script(marker: &str) -> String {
    format!("echo started; sh -c 'sleep 1; touch {marker}' & sleep 30")
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_and_cancel_kill_the_process_group_inside_the_pod() {
    let h = Harness::start().await;
    h.ready_pod("kills").await;
    let request =
        ExecRequest { timeout: Duration::from_millis(500), ..script("kills", &marker_script("timeout-marker")) };
    let started = Instant::now();
    let (timed_out, _) = h.run(request).await;
    assert_eq!(timed_out.termination, Termination::TimedOut);
    assert_eq!(timed_out.stdout.text(), "started\n");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        trigger.cancel();
    });
    let (cancelled, _) = h.run_with(script("kills", &marker_script("cancel-marker")), cancel).await;
    assert_eq!(cancelled.termination, Termination::Cancelled);
    assert_eq!(cancelled.termination.completion().exit_code, None);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    for marker in ["timeout-marker", "cancel-marker"] {
        assert!(!h.pod_dir("kills").join(marker).exists(), "{marker}: the background child outlived the kill");
    }
    assert!(h.processes("kills").await.is_empty(), "nothing left running in the pod");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_deleted_mid_command_is_pod_gone() {
    let h = Harness::start().await;
    h.ready_pod("doomed").await;
    let project = project_name("doomed");
    let backend = h.backend.clone();
    let deleter = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        backend.stop(&project).await.unwrap()
    });
    let (result, _) = h.run(script("doomed", "echo working; sleep 30")).await;
    deleter.await.unwrap();
    assert!(
        matches!(&result.termination, Termination::PodGone(why) if why.contains("rdev-doomed")),
        "{:?}",
        result.termination
    );
    let completion = result.termination.completion();
    assert_eq!((completion.status, completion.exit_code), (CommandStatus::Failed, None));
    assert_eq!(completion.reason.as_str(), "pod_gone");
    assert_eq!(result.stdout.text(), "working\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oom_kill_mid_command_is_oom_killed() {
    let h = Harness::start().await;
    h.ready_pod("hungry").await;
    let backend = h.backend.clone();
    let request = script("hungry", "echo eating; sleep 30");
    let run = tokio::spawn(async move {
        let sink = domain::testing::executor::RecordingSink::new();
        backend.run(request, &sink, CancellationToken::new()).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.control_post(&format!("/_sim/pods/{}/rdev-hungry/oom", common::NAMESPACE)).await, 200);
    let result = tokio::time::timeout(Duration::from_secs(10), run).await.unwrap().unwrap();
    assert_eq!(result.termination, Termination::OomKilled, "{}", result.stderr.text());
    assert_eq!(result.termination.completion().reason.as_str(), "oom_killed");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_eviction_mid_command_is_pod_gone_within_seconds() {
    let h = Harness::start().await;
    h.ready_pod("evicted").await;
    let backend = h.backend.clone();
    let request = script("evicted", "echo working; sleep 30");
    let run = tokio::spawn(async move {
        let sink = domain::testing::executor::RecordingSink::new();
        backend.run(request, &sink, CancellationToken::new()).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.control_post(&format!("/_sim/pods/{}/rdev-evicted/evict", common::NAMESPACE)).await, 200);
    let evicted = std::time::Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), run).await.unwrap().unwrap();
    assert!(evicted.elapsed() < Duration::from_secs(2), "ended {:?} after the eviction", evicted.elapsed());
    assert!(
        matches!(&result.termination, Termination::PodGone(why) if why.contains("Evicted")),
        "{:?}",
        result.termination
    );
    assert_eq!(result.termination.completion().reason.as_str(), "pod_gone");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_exit_status_is_a_failure_never_success() {
    let h = Harness::start().await;
    h.ready_pod("silent").await;
    h.sim.set_faults(Faults { omit_exec_status: Some(true), ..Faults::default() });
    let (result, _) = h.run(argv("silent", &["echo", "done"])).await;
    h.sim.clear_faults();
    assert!(
        matches!(&result.termination, Termination::Unknown(why) if why.contains("without an exit status")),
        "{:?}",
        result.termination
    );
    let completion = result.termination.completion();
    assert_eq!((completion.status, completion.exit_code), (CommandStatus::Failed, None));
    assert_eq!(result.stdout.text(), "done\n", "output before the missing status is kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unavailable_api_is_a_typed_error() {
    let h = Harness::start().await;
    h.ready_pod("outage").await;
    let project = project_name("outage");
    for faults in [
        Faults { error_status: Some(503), ..Faults::default() },
        Faults { refuse_connections: Some(true), ..Faults::default() },
    ] {
        h.sim.set_faults(faults.clone());
        let typed = h.backend.pod_status(&project).await;
        assert!(matches!(typed, Err(KubeError::ApiUnavailable(_))), "{faults:?}: {typed:?}");
        assert!(matches!(h.backend.check().await, Err(DomainError::Unavailable(_))), "{faults:?}");
        assert!(matches!(h.backend.status(&project).await, Err(DomainError::Unavailable(_))), "{faults:?}");
        // Nothing reached the pod: the run says so, and the worker hands the command back.
        let (result, _) = h.run(argv("outage", &["true"])).await;
        assert!(
            matches!(&result.termination, Termination::Unreachable(why) if why.contains("unavailable")),
            "{faults:?}: {:?}",
            result.termination
        );
    }
    h.sim.clear_faults();
    assert_eq!(h.backend.check().await, Ok(()));
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_need_a_ready_pod_and_never_create_one() {
    let h = Harness::start().await;
    let (result, _) = h.run(argv("podless", &["true"])).await;
    assert!(
        matches!(&result.termination, Termination::StartFailed(why) if why.contains("not ready")),
        "{:?}",
        result.termination
    );
    assert_eq!(h.backend.status(&project_name("podless")).await.unwrap().pod_name, None, "run created no pod");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_abandoned_run_kills_its_command_in_the_pod() {
    let h = Harness::start().await;
    h.ready_pod("dropped").await;
    let sink = domain::testing::executor::RecordingSink::new();
    let run = h.backend.run(script("dropped", &marker_script("abandoned-marker")), &sink, CancellationToken::new());
    assert!(tokio::time::timeout(Duration::from_millis(500), run).await.is_err(), "still running when dropped");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!h.pod_dir("dropped").join("abandoned-marker").exists(), "the command outlived its abandoned run");
    assert!(h.processes("dropped").await.is_empty(), "nothing left running in the pod");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_known_ready_is_not_read_before_each_command() {
    let h = Harness::start().await;
    h.ready_pod("cached").await;
    let reads = h.sim.pod_reads();
    for _ in 0..3 {
        let (result, _) = h.run(argv("cached", &["true"])).await;
        assert_eq!(result.termination, Termination::Exited(0), "{}", result.stderr.text());
    }
    assert_eq!(h.sim.pod_reads(), reads, "wait_ready saw the pod ready: no read before the commands");

    let uncached = KubeBackend::from_kubeconfig(
        Some(&h.dir.path().join("kubeconfig")),
        KubeConfig { pod_cache_ttl: Duration::ZERO, ..h.backend.config().clone() },
    )
    .await
    .unwrap();
    let sink = domain::testing::executor::RecordingSink::new();
    let result = uncached.run(argv("cached", &["true"]), &sink, CancellationToken::new()).await;
    assert_eq!(result.termination, Termination::Exited(0));
    assert_eq!(h.sim.pod_reads(), reads + 1, "without the cache each command reads the pod");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_replaced_behind_the_cache_is_still_told_apart() {
    let h = Harness::start().await;
    h.ready_pod("swapped").await;
    let project = project_name("swapped");
    let (result, _) = h.run(argv("swapped", &["true"])).await;
    assert_eq!(result.termination, Termination::Exited(0));

    // Another replica replaces the pod; this backend still holds the old uid.
    let other = h.other_backend().await;
    other.stop(&project).await.unwrap();
    other.start(&common::spec("swapped")).await.unwrap();
    assert!(other.wait_ready(&project, common::READY).await.unwrap().ready);
    // creationTimestamp has whole seconds: let it be plainly older than the next exec.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let reads = h.sim.pod_reads();
    let (result, _) = h.run(script("swapped", "kill -9 $$")).await;
    assert_eq!(
        result.termination,
        Termination::Exited(137),
        "the command ran in the replacement, which existed before the exec: its own death, not pod_gone"
    );
    assert_eq!(h.sim.pod_reads(), reads + 1, "read after the command, not before it");

    // A pod replaced while the command runs is still pod_gone.
    let run = h.run(script("swapped", "sleep 30"));
    let replace = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        other.stop(&project).await.unwrap();
        other.start(&common::spec("swapped")).await.unwrap();
    };
    let ((result, _), ()) = tokio::join!(run, replace);
    assert!(
        matches!(&result.termination, Termination::PodGone(_)),
        "the command's own pod went away: {:?}",
        result.termination
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_down_behind_the_cache_is_still_unreachable() {
    let h = Harness::start().await;
    h.ready_pod("down").await;
    // Warm: the pod is known ready, so the next run execs without reading it.
    let (result, _) = h.run(argv("down", &["true"])).await;
    assert_eq!(result.termination, Termination::Exited(0));

    // The API answers 500: the exec started nothing; the read it falls back to says why. (Not
    // 503: kube-rs retries that one until the exec times out, which proves nothing.)
    h.sim.set_faults(Faults { error_status: Some(500), ..Faults::default() });
    let (result, _) = h.run(argv("down", &["true"])).await;
    assert!(
        matches!(&result.termination, Termination::Unreachable(why) if why.contains("unavailable")),
        "500: {:?}",
        result.termination
    );
    h.sim.clear_faults();
    let (result, _) = h.run(argv("down", &["true"])).await;
    assert_eq!(result.termination, Termination::Exited(0), "warm again");

    // The API is gone altogether: connections are refused.
    let Harness { sim, backend, dir: _dir, .. } = h;
    sim.shutdown().await;
    let sink = domain::testing::executor::RecordingSink::new();
    let result = backend.run(argv("down", &["true"]), &sink, CancellationToken::new()).await;
    assert!(
        matches!(&result.termination, Termination::Unreachable(why) if why.contains("unavailable")),
        "refused: {:?}",
        result.termination
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_deleted_behind_the_cache_is_read_and_not_ready() {
    let h = Harness::start().await;
    h.ready_pod("vanished").await;
    let project = project_name("vanished");
    let other = h.other_backend().await;
    other.stop(&project).await.unwrap();
    let gone = Instant::now() + common::READY;
    while other.status(&project).await.unwrap().pod_name.is_some() {
        assert!(Instant::now() < gone, "the pod never went");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let reads = h.sim.pod_reads();
    let (result, _) = h.run(argv("vanished", &["true"])).await;
    assert!(
        matches!(&result.termination, Termination::StartFailed(why) if why.contains("not ready")),
        "the refused exec dropped the cache entry and the pod was read: {:?}",
        result.termination
    );
    assert_eq!(h.sim.pod_reads(), reads + 1);
}
