//! The process executor passes the shared executor contract, plus what only local processes do:
//! workspaces on disk, the default environment, kill pacing, and pipes held by grandchildren.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use adapters_process::{ProcessConfig, ProcessExecutor, Sandbox, SandboxConfig, DEFAULT_PATH};
use domain::command::{CommandSpec, EnvMap, Termination};
use domain::ids::CommandId;
use domain::ports::{ExecRequest, ExecResult, Executor};
use domain::testing::executor::{executor_contract, RecordingSink, CONTRACT_WORKDIR};
use domain::testing::project_name;
use domain::DomainError;
use tokio_util::sync::CancellationToken;

const GRACE: Duration = Duration::from_secs(1);

/// The sandbox as the server runs it, with this crate's copy of the helper.
fn sandbox() -> Sandbox {
    Sandbox::On(SandboxConfig::new(env!("CARGO_BIN_EXE_rdev-sandbox").into()))
}

fn executor(root: &Path) -> ProcessExecutor {
    ProcessExecutor::new(ProcessConfig {
        workspaces_root: root.join("workspaces"),
        kill_grace: GRACE,
        sandbox: sandbox(),
    })
}

/// `PROCESS_SANDBOX=off`: commands run as the server's user, in the host's file system.
fn unconfined(root: &Path) -> ProcessExecutor {
    ProcessExecutor::new(ProcessConfig {
        workspaces_root: root.join("workspaces"),
        kill_grace: GRACE,
        sandbox: Sandbox::Off,
    })
}

fn script(text: &str) -> ExecRequest {
    ExecRequest {
        command_id: CommandId::generate(),
        project: project_name("local-proj"),
        workdir: CONTRACT_WORKDIR.to_owned(),
        argv: CommandSpec::Script(text.to_owned()).to_argv(),
        env: EnvMap::default(),
        cwd: None,
        stdin: None,
        timeout: Duration::from_secs(30),
        max_output_bytes: 64 * 1024,
    }
}

async fn run(executor: &ProcessExecutor, request: ExecRequest) -> (ExecResult, Duration) {
    run_with(executor, request, CancellationToken::new()).await
}

async fn run_with(
    executor: &ProcessExecutor,
    request: ExecRequest,
    cancel: CancellationToken,
) -> (ExecResult, Duration) {
    let started = Instant::now();
    let result = executor.run(request, &RecordingSink::new(), cancel).await;
    (result, started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn process_executor_meets_the_executor_contract() {
    let root = tempfile::tempdir().expect("tempdir");
    executor_contract(&executor(root.path()), &project_name("contract")).await;
}

#[tokio::test]
async fn sandboxed_commands_run_in_the_workdir_which_is_home() {
    let root = tempfile::tempdir().expect("tempdir");
    let (result, _) = run(&executor(root.path()), script("pwd; echo \"$HOME\"; echo \"$PATH\"")).await;
    assert_eq!(result.termination, Termination::Exited(0), "stderr: {}", result.stderr.text());
    assert_eq!(result.stdout.text(), format!("{CONTRACT_WORKDIR}\n{CONTRACT_WORKDIR}\n{DEFAULT_PATH}\n"));
}

#[tokio::test]
async fn unconfined_commands_run_in_the_workspace_which_is_home() {
    let root = tempfile::tempdir().expect("tempdir");
    let exec = unconfined(root.path());
    let (result, _) = run(&exec, script("pwd; echo \"$HOME\"; echo \"$PATH\"")).await;
    assert_eq!(result.termination, Termination::Exited(0), "stderr: {}", result.stderr.text());
    let workspace = exec.workspace_dir(&project_name("local-proj"));
    assert_eq!(workspace, root.path().join("workspaces").join("local-proj"));
    let ws = workspace.canonicalize().expect("workspace was created").display().to_string();
    assert_eq!(result.stdout.text(), format!("{ws}\n{ws}\n{DEFAULT_PATH}\n"));
}

#[tokio::test]
async fn request_env_overrides_path_and_home() {
    let root = tempfile::tempdir().expect("tempdir");
    let vars =
        BTreeMap::from([("PATH".to_owned(), "/bin:/usr/bin".to_owned()), ("HOME".to_owned(), "/tmp".to_owned())]);
    let request = ExecRequest { env: EnvMap::parse(vars).expect("env"), ..script("echo \"$HOME $PATH\"") };
    let (result, _) = run(&executor(root.path()), request).await;
    assert_eq!(result.stdout.text(), "/tmp /bin:/usr/bin\n");
}

#[tokio::test]
async fn a_command_ignoring_sigterm_is_killed_after_the_grace() {
    let root = tempfile::tempdir().expect("tempdir");
    // An ignored signal stays ignored across exec, so `sleep` ignores SIGTERM too.
    let request = ExecRequest { timeout: Duration::from_secs(1), ..script("trap '' TERM; sleep 30") };
    let (result, elapsed) = run(&executor(root.path()), request).await;
    assert_eq!(result.termination, Termination::TimedOut);
    assert!(elapsed >= Duration::from_secs(1) + GRACE, "SIGKILL only after the grace, took {elapsed:?}");
    assert!(elapsed < Duration::from_secs(6), "SIGKILL ends it, took {elapsed:?}");
}

#[tokio::test]
async fn a_background_child_holding_stdout_does_not_hold_up_a_finished_command() {
    let root = tempfile::tempdir().expect("tempdir");
    let (result, elapsed) = run(&executor(root.path()), script("sleep 3 & echo done")).await;
    assert_eq!(result.termination, Termination::Exited(0));
    assert_eq!(result.stdout.text(), "done\n");
    assert!(elapsed < Duration::from_millis(2500), "waited for the background child: {elapsed:?}");
}

#[tokio::test]
async fn a_grandchild_that_left_the_group_does_not_hang_a_killed_command() {
    let root = tempfile::tempdir().expect("tempdir");
    let request = ExecRequest { timeout: Duration::from_secs(1), ..script("setsid sleep 5 & sleep 30") };
    let (result, elapsed) = run(&executor(root.path()), request).await;
    assert_eq!(result.termination, Termination::TimedOut);
    assert!(elapsed < Duration::from_secs(5), "waited on a pipe held outside the group: {elapsed:?}");
}

#[tokio::test]
async fn an_abandoned_run_kills_its_process_group() {
    let root = tempfile::tempdir().expect("tempdir");
    let exec = executor(root.path());
    let request = script("sh -c 'sleep 2; touch abandoned-marker' & sleep 30");
    let sink = RecordingSink::new();
    let dropped =
        tokio::time::timeout(Duration::from_secs(1), exec.run(request, &sink, CancellationToken::new())).await;
    assert!(dropped.is_err(), "the run was still going when dropped");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let marker = exec.workspace_dir(&project_name("local-proj")).join("abandoned-marker");
    assert!(!marker.exists(), "the background child outlived the abandoned run");
}

#[tokio::test]
async fn stdin_a_command_never_reads_does_not_block() {
    let root = tempfile::tempdir().expect("tempdir");
    let request = ExecRequest { stdin: Some(vec![b'a'; 4 * 1024 * 1024]), ..script("exit 0") };
    let (result, elapsed) = run(&executor(root.path()), request).await;
    assert_eq!(result.termination, Termination::Exited(0));
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[tokio::test]
async fn an_already_cancelled_run_is_cancelled() {
    let root = tempfile::tempdir().expect("tempdir");
    let cancel = CancellationToken::new();
    cancel.cancel();
    let (result, elapsed) = run_with(&executor(root.path()), script("sleep 30"), cancel).await;
    assert_eq!(result.termination, Termination::Cancelled);
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[tokio::test]
async fn a_file_that_is_not_executable_fails_to_start() {
    let root = tempfile::tempdir().expect("tempdir");
    let exec = executor(root.path());
    let workspace = exec.workspace_dir(&project_name("local-proj"));
    std::fs::create_dir_all(&workspace).expect("workspace");
    std::fs::write(workspace.join("notes.txt"), "not a program").expect("write");
    let request = ExecRequest { argv: vec!["./notes.txt".to_owned()], ..script("true") };
    let (result, _) = run(&exec, request).await;
    assert!(
        matches!(&result.termination, Termination::StartFailed(why) if why.contains("./notes.txt")),
        "{:?}",
        result.termination
    );
}

#[tokio::test]
async fn check_creates_the_root_or_reports_unavailable() {
    let root = tempfile::tempdir().expect("tempdir");
    let exec = executor(root.path());
    assert_eq!(exec.check().await, Ok(()));
    assert!(root.path().join("workspaces").is_dir(), "check creates the workspaces root");

    let file = root.path().join("a-file");
    std::fs::write(&file, "").expect("write");
    let broken = ProcessExecutor::new(ProcessConfig {
        workspaces_root: file.join("below"),
        kill_grace: GRACE,
        sandbox: sandbox(),
    });
    assert!(matches!(broken.check().await, Err(DomainError::Unavailable(_))));
}
