//! The sandbox, seen from inside a command: what it can reach (its workspace) and what it
//! cannot (the server's files and processes, other projects, privileges), and that nothing it
//! starts outlives it.
#![allow(clippy::expect_used, reason = "test helpers: a failed expectation is a failed test")]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use adapters_process::{NetworkMode, ProcessConfig, ProcessExecutor, Sandbox, SandboxConfig};
use domain::command::{CommandSpec, EnvMap, Termination};
use domain::ids::CommandId;
use domain::ports::{ExecRequest, ExecResult, Executor};
use domain::testing::executor::{RecordingSink, CONTRACT_WORKDIR};
use domain::testing::project_name;
use tokio_util::sync::CancellationToken;

const HELPER: &str = env!("CARGO_BIN_EXE_rdev-sandbox");

fn config() -> SandboxConfig {
    SandboxConfig::new(HELPER.into())
}

fn executor_with(root: &Path, sandbox: SandboxConfig) -> ProcessExecutor {
    ProcessExecutor::new(ProcessConfig {
        workspaces_root: root.join("workspaces"),
        kill_grace: Duration::from_millis(500),
        sandbox: Sandbox::On(sandbox),
    })
}

fn executor(root: &Path) -> ProcessExecutor {
    executor_with(root, config())
}

fn request(project: &str, script: &str) -> ExecRequest {
    ExecRequest {
        command_id: CommandId::generate(),
        project: project_name(project),
        workdir: CONTRACT_WORKDIR.to_owned(),
        argv: CommandSpec::Script(script.to_owned()).to_argv(),
        env: EnvMap::default(),
        cwd: None,
        stdin: None,
        timeout: Duration::from_secs(20),
        max_output_bytes: 64 * 1024,
    }
}

async fn run(exec: &ProcessExecutor, request: ExecRequest) -> ExecResult {
    exec.run(request, &RecordingSink::new(), CancellationToken::new()).await
}

async fn run_ok(exec: &ProcessExecutor, project: &str, script: &str) -> String {
    let result = run(exec, request(project, script)).await;
    assert_eq!(result.termination, Termination::Exited(0), "{script}: stderr {}", result.stderr.text());
    result.stdout.text()
}

/// A server-like tree: a database file and a key file next to the workspaces root.
fn server_tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let root = tempfile::tempdir().expect("tempdir");
    let db = root.path().join("rdev.db");
    let key = root.path().join("admin.key");
    std::fs::write(&db, "SQLite format 3").expect("db");
    std::fs::write(&key, "rdev_secret").expect("key");
    (root, db, key)
}

#[tokio::test]
async fn the_server_files_and_data_directory_are_invisible() {
    let (root, db, key) = server_tree();
    let exec = executor(root.path());
    for path in [&db, &key, &root.path().to_path_buf(), &root.path().join("workspaces")] {
        let script = format!("cat '{0}' || ls '{0}'", path.display());
        let result = run(&exec, request("alpha", &script)).await;
        assert_ne!(
            result.termination,
            Termination::Exited(0),
            "{} is reachable: {}",
            path.display(),
            result.stdout.text()
        );
        assert!(!result.stdout.text().contains("secret"), "{}", result.stdout.text());
    }
}

#[tokio::test]
async fn other_projects_are_out_of_reach_by_absolute_path_and_dot_dot() {
    let (root, _, _) = server_tree();
    let exec = executor(root.path());
    run_ok(&exec, "beta", "echo beta-private > notes").await;
    let beta = exec.workspace_dir(&project_name("beta"));
    assert_eq!(std::fs::read_to_string(beta.join("notes")).expect("written on the host"), "beta-private\n");

    let script = format!("cat '{0}/notes' || ls '{0}' || cat ../beta/notes", beta.display());
    let result = run(&exec, request("alpha", &script)).await;
    assert_ne!(result.termination, Termination::Exited(0));
    assert_eq!(result.stdout.text(), "");
    let write = format!("echo pwned > '{}/notes' || echo pwned > ../beta/notes", beta.display());
    run(&exec, request("alpha", &write)).await;
    assert_eq!(std::fs::read_to_string(beta.join("notes")).expect("still there"), "beta-private\n");

    for cwd in ["../beta", "/workspace/../beta", "../../", "/"] {
        let result = run(&exec, ExecRequest { cwd: Some(cwd.to_owned()), ..request("alpha", "ls") }).await;
        match (&result.termination, cwd) {
            (Termination::StartFailed(why), "../beta" | "/workspace/../beta") => assert!(why.contains("beta"), "{why}"),
            (Termination::Exited(0), _) => {
                assert!(!result.stdout.text().contains("beta"), "{cwd}: {}", result.stdout.text())
            }
            other => panic!("{cwd}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_file_written_in_the_workspace_is_in_the_project_directory() {
    let (root, _, _) = server_tree();
    let exec = executor(root.path());
    run_ok(&exec, "alpha", "mkdir -p src && echo hello > src/main.txt").await;
    let host = exec.workspace_dir(&project_name("alpha")).join("src/main.txt");
    assert_eq!(std::fs::read_to_string(host).expect("file"), "hello\n");
}

#[tokio::test]
async fn commands_have_no_identity_privilege_or_view_of_other_processes() {
    let (root, _, _) = server_tree();
    let exec = executor(root.path());
    let out = run_ok(&exec, "alpha", "id -u; id -g; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status").await;
    assert_eq!(out, "65532\n65532\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nNoNewPrivs:\t1\n");
    let server = std::process::id();
    let script = format!("kill -9 {server}; kill -9 1; kill -9 $PPID; echo alive; ls /proc | grep -c '^[0-9]'");
    let out = run_ok(&exec, "alpha", &script).await;
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("alive"));
    let visible: u32 = lines.next().and_then(|n| n.parse().ok()).expect("count");
    assert!(visible <= 5, "only the command's own processes are visible, saw {visible}");
}

#[tokio::test]
async fn system_directories_are_read_only_and_tmp_is_private() {
    let (root, _, _) = server_tree();
    let exec = executor(root.path());
    let marker = format!("rdev-sandbox-tmp-{}", uuid_like());
    run_ok(&exec, "alpha", &format!("touch /tmp/{marker}")).await;
    assert!(!Path::new("/tmp").join(&marker).exists(), "the sandbox's /tmp is its own");
    let result =
        run(&exec, request("alpha", "touch /usr/rdev-probe || touch /etc/rdev-probe || touch /rdev-probe")).await;
    assert_ne!(result.termination, Termination::Exited(0));
    assert!(!Path::new("/usr/rdev-probe").exists() && !Path::new("/etc/rdev-probe").exists());
    assert_eq!(run_ok(&exec, "alpha", "test -e /etc/shadow && wc -c < /etc/shadow || echo 0").await.trim(), "0");
}

#[tokio::test]
async fn without_network_only_loopback_exists() {
    let (root, _, _) = server_tree();
    let exec = executor_with(root.path(), SandboxConfig { network: NetworkMode::None, ..config() });
    let out = run_ok(&exec, "alpha", "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '").await;
    assert_eq!(out, "lo\n");
}

#[tokio::test]
async fn a_workdir_that_cannot_be_made_fails_the_command_with_the_reason() {
    let (root, _, _) = server_tree();
    let exec = executor(root.path());
    let request = ExecRequest { workdir: "/usr/rdev-no-such-dir/app".to_owned(), ..request("alpha", "true") };
    let result = run(&exec, request).await;
    let Termination::StartFailed(why) = &result.termination else { panic!("{:?}", result.termination) };
    assert!(why.contains("/usr/rdev-no-such-dir/app"), "{why}");
}

fn uuid_like() -> String {
    CommandId::generate().to_string().replace('-', "")
}

/// Processes on the host whose command line holds `needle`.
fn host_processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(needle) {
            found.push(format!("{}: {text}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

/// A script that leaves `sleep` processes behind in every way a process can escape its
/// group: `setsid`, `nohup`, a double fork; each sleeps a unique number of seconds.
fn escaping_script(tag: &str) -> String {
    format!(
        "setsid sleep 3601.{tag} >/dev/null 2>&1 & nohup sleep 3602.{tag} >/dev/null 2>&1 & \
         (sleep 3603.{tag} >/dev/null 2>&1 &) ; sh -c '(sleep 3604.{tag} &) &' ; sleep 0.3; echo started"
    )
}

async fn assert_nothing_left(tag: &str, what: &str, ended: Instant) {
    // The rule is "gone within 1 s": check at that moment.
    tokio::time::sleep(Duration::from_secs(1).saturating_sub(ended.elapsed())).await;
    let left = host_processes_with(&format!(".{tag}"));
    assert!(left.is_empty(), "{what}: processes outlived the command: {left:?}");
}

#[tokio::test]
async fn nothing_outlives_a_command_that_exits() {
    let (root, _, _) = server_tree();
    let tag = format!("{}", std::process::id() * 10 + 1);
    let result = run(&executor(root.path()), request("alpha", &escaping_script(&tag))).await;
    let ended = Instant::now();
    assert_eq!(result.termination, Termination::Exited(0), "{}", result.stderr.text());
    assert_nothing_left(&tag, "normal exit", ended).await;
}

#[tokio::test]
async fn nothing_outlives_a_command_that_times_out() {
    let (root, _, _) = server_tree();
    let tag = format!("{}", std::process::id() * 10 + 2);
    let script = format!("{}; sleep 60", escaping_script(&tag));
    let request = ExecRequest { timeout: Duration::from_secs(2), ..request("alpha", &script) };
    let result = run(&executor(root.path()), request).await;
    let ended = Instant::now();
    assert_eq!(result.termination, Termination::TimedOut);
    assert_nothing_left(&tag, "timeout", ended).await;
}

#[tokio::test]
async fn nothing_outlives_a_cancelled_command_that_keeps_forking() {
    let (root, _, _) = server_tree();
    let tag = format!("{}", std::process::id() * 10 + 3);
    // Forks a new escaping sleeper every few milliseconds, also while it is being killed, and
    // ignores SIGTERM so the kill has to go through the SIGKILL path.
    let script = format!(
        "trap '' TERM; {}; i=0; while [ $i -lt 5000 ]; do setsid sleep 3605.{tag} & i=$((i+1)); done",
        escaping_script(&tag)
    );
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let exec = executor(root.path());
    let sink = RecordingSink::new();
    let (result, ()) = tokio::join!(exec.run(request("alpha", &script), &sink, cancel), async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        trigger.cancel();
    });
    let ended = Instant::now();
    assert_eq!(result.termination, Termination::Cancelled);
    assert_nothing_left(&tag, "cancel while forking", ended).await;
}

#[tokio::test]
async fn a_host_that_forbids_namespaces_makes_the_probe_fail_with_the_cause() {
    let (root, _, _) = server_tree();
    // The helper runs in a user namespace whose limit on nested user namespaces is 0, as on a
    // host with user.max_user_namespaces=0.
    let wrapper = root.path().join("no-userns-helper");
    let script = format!(
        "#!/bin/sh\nexec unshare --user --map-root-user sh -c 'echo 0 > /proc/sys/user/max_user_namespaces && exec \"$0\" \"$@\"' {HELPER} \"$@\"\n"
    );
    std::fs::write(&wrapper, script).expect("wrapper");
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let exec = executor_with(root.path(), SandboxConfig::new(wrapper));
    let why = exec.probe_sandbox().await.expect_err("the sandbox cannot start");
    assert!(why.contains("cannot create user, PID and mount namespaces"), "{why}");
    assert_eq!(executor(root.path()).probe_sandbox().await, Ok(()), "this host allows the sandbox");
    let result = run(&exec, request("alpha", "echo ran")).await;
    assert!(matches!(result.termination, Termination::StartFailed(_)), "never unsandboxed: {:?}", result.termination);
    assert_eq!(result.stdout.text(), "");
}

#[tokio::test]
async fn the_end_is_reported_only_once_nothing_of_the_command_is_left() {
    let (root, _, _) = server_tree();
    let tag = format!("{}", std::process::id() * 10 + 4);
    let result = run(&executor(root.path()), request("alpha", &escaping_script(&tag))).await;
    assert_eq!(result.termination, Termination::Exited(0), "{}", result.stderr.text());
    // At once, not after a grace: the helper passes the end on before the namespaces are torn
    // down, and init kills and reaps whatever the command left before it reports. The helper
    // and init themselves (whose arguments hold the script) may still be exiting.
    let left: Vec<String> =
        host_processes_with(&format!(".{tag}")).into_iter().filter(|p| !p.contains(" __sandbox ")).collect();
    assert!(left.is_empty(), "processes of the command were alive when its end was reported: {left:?}");
}

#[tokio::test]
async fn a_command_cannot_report_an_end_of_its_own() {
    let (root, _, _) = server_tree();
    // Two zero bytes are the helper's "exited 0"; written to every descriptor the command
    // could have inherited, none may reach the server as the command's end.
    // bash, because dash cannot name a descriptor above 9 in a redirection.
    let script = "bash -c 'for f in /proc/$$/fd/*; do n=${f##*/}; [ $n -gt 2 ] && printf \"\\0\\0\" >&$n; done' \
                  2>/dev/null; sleep 0.2; exit 7";
    let result = run(&executor(root.path()), request("alpha", script)).await;
    assert_eq!(result.termination, Termination::Exited(7), "{}", result.stderr.text());
}

#[tokio::test]
async fn a_workdir_under_tmp_is_the_workspace() {
    let (root, _, _) = server_tree();
    let exec = executor(root.path());
    let request = ExecRequest { workdir: "/tmp/work".to_owned(), ..request("alpha", "pwd; echo hi > note") };
    let result = run(&exec, request).await;
    assert_eq!(result.termination, Termination::Exited(0), "{}", result.stderr.text());
    assert_eq!(result.stdout.text(), "/tmp/work\n");
    let host = exec.workspace_dir(&project_name("alpha")).join("note");
    assert_eq!(std::fs::read_to_string(host).expect("written through /tmp/work"), "hi\n");
}
