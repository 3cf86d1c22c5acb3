//! The executor contract suite: every `Executor` (local processes, Kubernetes pods) runs it, so
//! each sentence of `Executor::run`'s doc is checked the same way everywhere.
//!
//! It uses only the port and tools every pod image has (`sh`, `echo`, `env`, `cat`, `pwd`, `wc`,
//! `head`, `tr`, `sleep`, `touch`, `test`, `mkdir`, `rm`, and `setsid` and `nohup` for the
//! escape attempts), and leaves only an empty workspace behind.
//!
//! "Nothing outlives its command" is checked through the workspace, not through pids: an
//! executor may run each command in its own PID namespace, where neither the host's pids nor a
//! second command's view of the first's processes mean anything. Escaped background loops write
//! heartbeat files; a later command reads them twice, and a file that changed has a writer left.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::command::{CommandSpec, EnvMap, Termination};
use crate::ids::CommandId;
use crate::output::OutputStream;
use crate::ports::{ExecRequest, ExecResult, Executor, OutputSink};
use crate::project::ProjectName;

/// The project workdir the suite's requests name (the pod path relative `cwd`s start from).
pub const CONTRACT_WORKDIR: &str = "/workspace";

/// How long past its own timeout a run may take before the suite calls the executor hung.
const HANG_SLACK: Duration = Duration::from_secs(30);

/// How soon after its timeout (or cancel) a killed command must be reported as ended.
const KILL_DEADLINE: Duration = Duration::from_secs(15);

/// An `OutputSink` that keeps every chunk with the moment it arrived, and each start report.
#[derive(Debug, Default)]
pub struct RecordingSink {
    chunks: Mutex<Vec<RecordedChunk>>,
    starts: Mutex<Vec<Instant>>,
}

/// One chunk a `RecordingSink` received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedChunk {
    /// Which stream it came from.
    pub stream: OutputStream,
    /// The bytes.
    pub data: Vec<u8>,
    /// When the sink got it.
    pub at: Instant,
}

impl RecordingSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every chunk received so far, in arrival order.
    pub fn chunks(&self) -> Vec<RecordedChunk> {
        self.chunks.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// All bytes received for one stream, concatenated.
    pub fn bytes(&self, stream: OutputStream) -> Vec<u8> {
        self.chunks().into_iter().filter(|c| c.stream == stream).flat_map(|c| c.data).collect()
    }

    /// When the executor reported the command started, once per report.
    pub fn starts(&self) -> Vec<Instant> {
        self.starts.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// All bytes received for one stream, as text (invalid UTF-8 replaced).
    pub fn text(&self, stream: OutputStream) -> String {
        String::from_utf8_lossy(&self.bytes(stream)).into_owned()
    }
}

#[async_trait]
impl OutputSink for RecordingSink {
    async fn emit(&self, stream: OutputStream, data: &[u8]) {
        let chunk = RecordedChunk { stream, data: data.to_vec(), at: Instant::now() };
        self.chunks.lock().unwrap_or_else(PoisonError::into_inner).push(chunk);
    }

    async fn started(&self) {
        self.starts.lock().unwrap_or_else(PoisonError::into_inner).push(Instant::now());
    }
}

/// Runs every executor check in sequence against `executor`, in `project`'s pod or workspace.
/// Panics with a message naming the broken rule. Takes about 30 seconds (it waits out kills and
/// watches for survivors).
pub async fn executor_contract(executor: &dyn Executor, project: &ProjectName) {
    assert_eq!(executor.check().await, Ok(()), "check() MUST be Ok for a working executor");
    argv_runs_the_program_without_a_shell(executor, project).await;
    script_runs_under_sh(executor, project).await;
    stdout_and_stderr_are_separate_and_streamed(executor, project).await;
    exit_codes_are_reported_as_they_arrive(executor, project).await;
    environment_is_exactly_the_requested_one(executor, project).await;
    cwd_is_relative_to_the_default_or_absolute(executor, project).await;
    commands_that_cannot_start_are_start_failed(executor, project).await;
    stdin_is_delivered_then_closed(executor, project).await;
    long_output_keeps_head_and_tail(executor, project).await;
    timeout_kills_the_whole_process_group(executor, project).await;
    cancel_kills_the_whole_process_group(executor, project).await;
    nothing_outlives_a_command_that_exits(executor, project).await;
    nothing_outlives_a_timed_out_command(executor, project).await;
    nothing_outlives_a_cancelled_command(executor, project).await;
    nothing_outlives_a_command_that_keeps_forking(executor, project).await;
}

/// What one run produced.
struct Outcome {
    result: ExecResult,
    sink: Arc<RecordingSink>,
    elapsed: Duration,
    ended_at: Instant,
}

impl Outcome {
    fn stdout(&self) -> String {
        self.result.stdout.text()
    }

    fn stderr(&self) -> String {
        self.result.stderr.text()
    }

    fn assert_exited(&self, code: i32, what: &str) {
        assert_eq!(
            self.result.termination,
            Termination::Exited(code),
            "{what}: expected exit {code}; stdout {:?}, stderr {:?}",
            self.stdout(),
            self.stderr()
        );
    }
}

fn unique() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

fn argv_request(project: &ProjectName, argv: &[&str]) -> ExecRequest {
    ExecRequest {
        command_id: CommandId::generate(),
        project: project.clone(),
        workdir: CONTRACT_WORKDIR.to_owned(),
        argv: argv.iter().map(|a| (*a).to_owned()).collect(),
        env: EnvMap::default(),
        cwd: None,
        stdin: None,
        timeout: Duration::from_secs(30),
        max_output_bytes: 64 * 1024,
    }
}

/// A request for a shell script, built the way services build one from `{"script": …}`.
fn script_request(project: &ProjectName, script: &str) -> ExecRequest {
    ExecRequest { argv: CommandSpec::Script(script.to_owned()).to_argv(), ..argv_request(project, &["true"]) }
}

async fn run(executor: &dyn Executor, request: ExecRequest, what: &str) -> Outcome {
    run_cancellable(executor, request, CancellationToken::new(), what).await
}

async fn run_cancellable(
    executor: &dyn Executor,
    request: ExecRequest,
    cancel: CancellationToken,
    what: &str,
) -> Outcome {
    run_into(executor, request, cancel, Arc::new(RecordingSink::new()), what).await
}

/// Runs `request` into `sink`, which the caller may watch while the command runs.
async fn run_into(
    executor: &dyn Executor,
    request: ExecRequest,
    cancel: CancellationToken,
    sink: Arc<RecordingSink>,
    what: &str,
) -> Outcome {
    let limit = request.timeout + HANG_SLACK;
    let started = Instant::now();
    let result = match tokio::time::timeout(limit, executor.run(request, sink.as_ref(), cancel)).await {
        Ok(result) => result,
        Err(_) => panic!("{what}: run() did not return within {limit:?} (the executor hangs)"),
    };
    Outcome { result, sink, elapsed: started.elapsed(), ended_at: Instant::now() }
}

async fn argv_runs_the_program_without_a_shell(executor: &dyn Executor, project: &ProjectName) {
    let what = "argv form";
    let out = run(executor, argv_request(project, &["echo", "two  spaces", "$HOME", "*"]), what).await;
    out.assert_exited(0, what);
    assert_eq!(out.stdout(), "two  spaces $HOME *\n", "{what}: arguments MUST reach the program verbatim");
    assert_eq!(out.stderr(), "", "{what}: nothing on stderr");
    // The worker logs "command started" from this report, whichever executor runs the command.
    let starts = out.sink.starts();
    assert_eq!(starts.len(), 1, "{what}: the start MUST be reported once");
    let first_output = out.sink.chunks().first().map(|c| c.at);
    assert!(first_output.is_none_or(|at| starts[0] <= at), "{what}: the start MUST be reported before any output");
}

async fn script_runs_under_sh(executor: &dyn Executor, project: &ProjectName) {
    let what = "script form";
    let out = run(executor, script_request(project, "x=world; echo \"hello $x\" | tr a-z A-Z"), what).await;
    out.assert_exited(0, what);
    assert_eq!(out.stdout(), "HELLO WORLD\n", "{what}: the script MUST run under sh");
}

async fn stdout_and_stderr_are_separate_and_streamed(executor: &dyn Executor, project: &ProjectName) {
    let what = "separate streams";
    let script = "echo out-1; echo err-1 >&2; echo out-2; echo err-2 >&2";
    let out = run(executor, script_request(project, script), what).await;
    out.assert_exited(0, what);
    assert_eq!(out.stdout(), "out-1\nout-2\n", "{what}: captured stdout MUST hold only stdout");
    assert_eq!(out.stderr(), "err-1\nerr-2\n", "{what}: captured stderr MUST hold only stderr");
    assert_eq!(out.sink.text(OutputStream::Stdout), "out-1\nout-2\n", "{what}: the sink MUST get stdout");
    assert_eq!(out.sink.text(OutputStream::Stderr), "err-1\nerr-2\n", "{what}: the sink MUST get stderr");
    assert!(!out.result.stdout.truncated && !out.result.stderr.truncated, "{what}: short output is not truncated");

    let what = "streaming";
    let out = run(executor, script_request(project, "echo early; sleep 2; echo late"), what).await;
    out.assert_exited(0, what);
    assert_eq!(out.sink.text(OutputStream::Stdout), "early\nlate\n", "{what}: the sink MUST get every chunk");
    let early = out.sink.chunks().into_iter().find(|c| c.data.starts_with(b"early"));
    let Some(early) = early else { panic!("{what}: no chunk starts with the first line: {:?}", out.sink.chunks()) };
    let ahead = out.ended_at.duration_since(early.at);
    assert!(
        ahead >= Duration::from_secs(1),
        "{what}: output MUST reach the sink while the command runs, not at its end (arrived {ahead:?} before the end)"
    );
}

async fn exit_codes_are_reported_as_they_arrive(executor: &dyn Executor, project: &ProjectName) {
    for code in [0, 1, 3] {
        let what = format!("exit {code}");
        run(executor, script_request(project, &what), &what).await.assert_exited(code, &what);
    }
    run(executor, argv_request(project, &["false"]), "argv false").await.assert_exited(1, "argv false");

    let what = "killed by SIGKILL";
    let out = run(executor, script_request(project, "echo dying; kill -9 $$"), what).await;
    assert!(
        matches!(out.result.termination, Termination::Signaled(9) | Termination::Exited(137)),
        "{what}: a process killed by signal 9 (not by the executor) MUST be Signaled(9) (or a kubelet's Exited(137)), got {:?}",
        out.result.termination
    );
    assert_eq!(out.stdout(), "dying\n", "{what}: output before the death is kept");
}

fn env_map(vars: &[(&str, &str)]) -> EnvMap {
    let vars: BTreeMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    EnvMap::parse(vars).unwrap_or_else(|e| panic!("bad test env: {e}"))
}

async fn environment_is_exactly_the_requested_one(executor: &dyn Executor, project: &ProjectName) {
    let what = "environment";
    let request = ExecRequest {
        env: env_map(&[("RDEV_CONTRACT_VALUE", "spaces and = signs"), ("RDEV_CONTRACT_EMPTY", "")]),
        ..argv_request(project, &["env"])
    };
    let out = run(executor, request, what).await;
    out.assert_exited(0, what);
    let stdout = out.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    for expected in ["RDEV_CONTRACT_VALUE=spaces and = signs", "RDEV_CONTRACT_EMPTY="] {
        assert!(lines.contains(&expected), "{what}: the request's env MUST be set ({expected:?} missing): {lines:?}");
    }
    assert!(lines.iter().any(|l| l.starts_with("PATH=")), "{what}: PATH MUST be set so programs are found: {lines:?}");
    let leaked: Vec<&&str> = lines.iter().filter(|l| l.starts_with("CARGO")).collect();
    assert!(leaked.is_empty(), "{what}: the server's own variables MUST NOT reach commands, found {leaked:?}");
}

async fn pwd(executor: &dyn Executor, project: &ProjectName, cwd: Option<&str>) -> String {
    let what = format!("pwd in {cwd:?}");
    let out =
        run(executor, ExecRequest { cwd: cwd.map(str::to_owned), ..argv_request(project, &["pwd"]) }, &what).await;
    out.assert_exited(0, &what);
    out.stdout().trim_end().to_owned()
}

async fn cwd_is_relative_to_the_default_or_absolute(executor: &dyn Executor, project: &ProjectName) {
    let top = format!("contract-cwd-{}", unique());
    let nested = format!("{top}/inner");
    let what = "mkdir for the cwd check";
    run(executor, argv_request(project, &["mkdir", "-p", &nested]), what).await.assert_exited(0, what);

    let default = pwd(executor, project, None).await;
    assert!(default.starts_with('/'), "the default cwd is an absolute directory, got {default:?}");
    let relative = pwd(executor, project, Some(&nested)).await;
    let expected = format!("{}/{nested}", default.trim_end_matches('/'));
    assert_eq!(relative, expected, "a relative cwd MUST be taken from the default working directory");
    assert_eq!(pwd(executor, project, Some("/tmp")).await, "/tmp", "an absolute cwd MUST be used as is");

    let what = "cleanup of the cwd check";
    run(executor, argv_request(project, &["rm", "-rf", &top]), what).await.assert_exited(0, what);
}

fn assert_start_failed(out: &Outcome, what: &str) {
    let Termination::StartFailed(reason) = &out.result.termination else {
        panic!("{what}: MUST be StartFailed, got {:?} (stderr {:?})", out.result.termination, out.stderr());
    };
    assert!(!reason.trim().is_empty(), "{what}: StartFailed MUST say why");
    assert_eq!(out.result.termination.completion().exit_code, None, "{what}: no exit code is invented");
}

async fn commands_that_cannot_start_are_start_failed(executor: &dyn Executor, project: &ProjectName) {
    let id = unique();
    let missing_relative = format!("contract-missing-{id}");
    let missing_absolute = format!("/contract-missing-{id}");
    for cwd in [missing_relative, missing_absolute] {
        let what = format!("missing cwd {cwd}");
        let request = ExecRequest { cwd: Some(cwd.clone()), ..argv_request(project, &["echo", "ran"]) };
        let out = run(executor, request, &what).await;
        assert_start_failed(&out, &what);
        assert_eq!(out.stdout(), "", "{what}: nothing ran");
    }
    let program = format!("rdev-contract-no-such-program-{id}");
    let what = "unknown program";
    assert_start_failed(&run(executor, argv_request(project, &[&program, "arg"]), what).await, what);
}

async fn stdin_is_delivered_then_closed(executor: &dyn Executor, project: &ProjectName) {
    let what = "stdin";
    let input = b"line one\nline two\nno newline at the end".to_vec();
    let out = run(executor, ExecRequest { stdin: Some(input.clone()), ..argv_request(project, &["cat"]) }, what).await;
    out.assert_exited(0, what);
    assert_eq!(out.result.stdout.data, input, "{what}: the bytes MUST arrive unchanged, then EOF");

    // Bigger than any pipe buffer, so a writer that blocks on a full pipe would deadlock here.
    let what = "large stdin";
    let big = vec![b'z'; 256 * 1024];
    let out = run(executor, ExecRequest { stdin: Some(big), ..argv_request(project, &["wc", "-c"]) }, what).await;
    out.assert_exited(0, what);
    assert_eq!(out.stdout().trim(), "262144", "{what}: every byte MUST arrive");

    let what = "no stdin";
    let request = ExecRequest { timeout: Duration::from_secs(10), ..argv_request(project, &["cat"]) };
    let out = run(executor, request, what).await;
    out.assert_exited(0, "without stdin, stdin MUST be closed at once (cat would wait forever)");
    assert_eq!(out.stdout(), "", "{what}: nothing to echo");
}

async fn long_output_keeps_head_and_tail(executor: &dyn Executor, project: &ProjectName) {
    let what = "output over max_output_bytes";
    let script = "printf BEGIN; head -c 100000 /dev/zero | tr '\\0' x; printf END; echo small >&2";
    let out = run(executor, ExecRequest { max_output_bytes: 1000, ..script_request(project, script) }, what).await;
    out.assert_exited(0, what);
    let data = &out.result.stdout.data;
    assert!(out.result.stdout.truncated, "{what}: truncated MUST be set");
    assert_eq!(data.len(), 1000, "{what}: exactly max_output_bytes are kept");
    assert!(data.starts_with(b"BEGIN"), "{what}: the head MUST be kept");
    assert!(data.ends_with(b"END"), "{what}: the tail MUST be kept");
    assert!(data[5..997].iter().all(|b| *b == b'x'), "{what}: the kept middle is stream bytes");
    assert_eq!(out.stderr(), "small\n", "{what}: the cap is per stream");
    assert!(!out.result.stderr.truncated, "{what}: short stderr is not truncated");
    assert_eq!(out.sink.bytes(OutputStream::Stdout).len(), 100_008, "{what}: the sink MUST get every byte");
}

/// A script that leaves a background child which would create `marker` after 2 s.
fn marker_script(marker: &str) -> String {
    format!("echo started; sh -c 'sleep 2; touch {marker}' & sleep 30")
}

/// Waits until the background child would have made `marker`, then checks that it did not.
async fn assert_marker_never_appears(executor: &dyn Executor, project: &ProjectName, marker: &str, what: &str) {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let out = run(executor, argv_request(project, &["test", "-e", marker]), what).await;
    if out.result.termination == Termination::Exited(0) {
        run(executor, argv_request(project, &["rm", "-f", marker]), "marker cleanup").await;
    }
    out.assert_exited(1, &format!("{what}: a background child MUST be killed with its command"));
}

fn assert_killed_in_time(out: &Outcome, killed_after: Duration, expected: &Termination, what: &str) {
    assert_eq!(&out.result.termination, expected, "{what}: stderr {:?}", out.stderr());
    assert_eq!(out.result.termination.completion().exit_code, None, "{what}: no exit code is invented");
    assert!(out.elapsed >= killed_after, "{what}: ended after {:?}, before the kill", out.elapsed);
    assert!(
        out.elapsed <= killed_after + KILL_DEADLINE,
        "{what}: MUST end within {KILL_DEADLINE:?} of the kill, took {:?}",
        out.elapsed
    );
    assert_eq!(out.stdout(), "started\n", "{what}: output printed before the kill is kept");
}

async fn timeout_kills_the_whole_process_group(executor: &dyn Executor, project: &ProjectName) {
    let what = "timeout";
    let marker = format!("contract-timeout-marker-{}", unique());
    let timeout = Duration::from_secs(1);
    let request = ExecRequest { timeout, ..script_request(project, &marker_script(&marker)) };
    let out = run(executor, request, what).await;
    assert_killed_in_time(&out, timeout, &Termination::TimedOut, what);
    assert_marker_never_appears(executor, project, &marker, what).await;
}

async fn cancel_kills_the_whole_process_group(executor: &dyn Executor, project: &ProjectName) {
    let what = "cancel";
    let marker = format!("contract-cancel-marker-{}", unique());
    let request = ExecRequest { timeout: Duration::from_secs(60), ..script_request(project, &marker_script(&marker)) };
    let cancel = CancellationToken::new();
    let after = Duration::from_secs(1);
    let trigger = cancel.clone();
    let (out, ()) = tokio::join!(run_cancellable(executor, request, cancel, what), async move {
        tokio::time::sleep(after).await;
        trigger.cancel();
    });
    assert_killed_in_time(&out, after, &Termination::Cancelled, what);
    assert_marker_never_appears(executor, project, &marker, what).await;
}

/// Heartbeat files and the loops that write them, for one survivor check.
struct Heartbeats {
    prefix: String,
}

/// Each escaping form a command may use to leave its process group, with how it starts a loop.
const ESCAPES: [(&str, &str); 3] = [
    ("setsid", "setsid sh -c '{loop}' >/dev/null 2>&1 &"),
    ("nohup", "nohup sh -c '{loop}' >/dev/null 2>&1 &"),
    ("double fork", "(sh -c '{loop}' >/dev/null 2>&1 &)"),
];

/// How long a heartbeat loop lives at most (in 0.1 s beats), so a failed check leaves no
/// process behind for long.
const BEATS: u32 = 300;

impl Heartbeats {
    fn new(case: &str) -> Self {
        Self { prefix: format!("contract-hb-{case}-{}", unique()) }
    }

    fn file(&self, form: &str) -> String {
        format!("{}-{}", self.prefix, form.replace(' ', "-"))
    }

    /// A loop that bumps a counter in `file` every 0.1 s (a counter, not `date +%N`, which
    /// busybox lacks); `trap '' TERM` when it must take SIGKILL to stop.
    fn beat_loop(file: &str, ignore_term: bool) -> String {
        let trap = if ignore_term { "trap \"\" TERM; " } else { "" };
        format!("{trap}i=0; while [ $i -lt {BEATS} ]; do i=$((i+1)); echo \"$$ $i\" > {file}; sleep 0.1; done")
    }

    /// The script text that starts one loop per escaping form, waits until each has written
    /// its file, then says `started`.
    fn start_all(&self) -> String {
        let mut script =
            String::from("command -v setsid >/dev/null || { echo 'the image has no setsid' >&2; exit 97; }\n");
        for (form, template) in ESCAPES {
            script.push_str(&template.replace("{loop}", &Self::beat_loop(&self.file(form), false)));
            script.push('\n');
        }
        let missing: Vec<String> = ESCAPES.iter().map(|(form, _)| format!("[ ! -s {} ]", self.file(form))).collect();
        script.push_str(&format!(
            "n=0; while {}; do n=$((n+1)); if [ $n -gt 100 ]; then echo 'loops never started' >&2; exit 98; fi; sleep 0.1; done\necho started\n",
            missing.join(" || ")
        ));
        script
    }

    /// Reads every heartbeat file (`<file>:<content>` lines) with a command of its own.
    async fn read(&self, executor: &dyn Executor, project: &ProjectName, files: &[String], what: &str) -> String {
        let script =
            format!("for f in {}; do printf '%s:%s\\n' \"$f\" \"$(cat \"$f\" 2>/dev/null)\"; done", files.join(" "));
        let out = run(executor, script_request(project, &script), what).await;
        out.assert_exited(0, what);
        out.stdout()
    }

    /// After the command's run() returned: waits 1 s, reads the files, waits 0.5 s, reads
    /// again. A file that changed in between still has a writer: a process that outlived its
    /// command. Removes the files, then panics naming the forms that survived. `forms` pairs each
    /// escaping form with its heartbeat file.
    async fn assert_no_survivor(
        &self,
        executor: &dyn Executor,
        project: &ProjectName,
        forms: &[(&str, String)],
        case: &str,
    ) {
        let files: Vec<String> = forms.iter().map(|(_, file)| file.clone()).collect();
        let files = files.as_slice();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let what = format!("{case}: reading the heartbeats");
        let first = self.read(executor, project, files, &what).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let second = self.read(executor, project, files, &what).await;
        let cleanup = format!("rm -f {}*", self.prefix);
        run(executor, script_request(project, &cleanup), "heartbeat cleanup")
            .await
            .assert_exited(0, "heartbeat cleanup");
        let survivors: Vec<&str> = forms
            .iter()
            .zip(first.lines().zip(second.lines()))
            .filter(|(_, (a, b))| a != b)
            .map(|((form, _), _)| *form)
            .collect();
        assert!(
            first.lines().count() == files.len() && second.lines().count() == files.len(),
            "{case}: could not read the heartbeat files: {first:?} / {second:?}"
        );
        assert!(
            survivors.is_empty(),
            "{case}: processes the command started outlived it and still ran 1 s after run() returned \
             (escaped with {survivors:?}: their heartbeat files kept changing); every process of a \
             command, setsid, nohup and double-forked ones included, MUST die with it",
        );
    }

    /// Each escaping form with its heartbeat file.
    fn forms(&self) -> Vec<(&'static str, String)> {
        ESCAPES.iter().map(|(form, _)| (*form, self.file(form))).collect()
    }
}

/// Waits until `sink` shows `started` on stdout, then cancels `cancel` after `after`.
async fn cancel_once_started(sink: &RecordingSink, cancel: &CancellationToken, after: Duration) {
    let limit = Instant::now() + Duration::from_secs(20);
    while !sink.text(OutputStream::Stdout).contains("started") && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(after).await;
    cancel.cancel();
}

fn assert_started(out: &Outcome, case: &str) {
    assert!(
        out.stdout().contains("started"),
        "{case}: the heartbeat loops never started, so nothing could be checked (termination {:?}, stderr {:?})",
        out.result.termination,
        out.stderr()
    );
}

async fn nothing_outlives_a_command_that_exits(executor: &dyn Executor, project: &ProjectName) {
    let case = "normal exit";
    let beats = Heartbeats::new("exit");
    let script = format!("{}exit 0", beats.start_all());
    let out = run(executor, script_request(project, &script), case).await;
    out.assert_exited(0, case);
    assert_started(&out, case);
    beats.assert_no_survivor(executor, project, &beats.forms(), case).await;
}

async fn nothing_outlives_a_timed_out_command(executor: &dyn Executor, project: &ProjectName) {
    let case = "timeout";
    let beats = Heartbeats::new("timeout");
    let script = format!("{}sleep 30", beats.start_all());
    let request = ExecRequest { timeout: Duration::from_secs(4), ..script_request(project, &script) };
    let out = run(executor, request, case).await;
    assert_started(&out, case);
    assert_eq!(out.result.termination, Termination::TimedOut, "{case}: stderr {:?}", out.stderr());
    beats.assert_no_survivor(executor, project, &beats.forms(), case).await;
}

async fn nothing_outlives_a_cancelled_command(executor: &dyn Executor, project: &ProjectName) {
    let case = "cancel";
    let beats = Heartbeats::new("cancel");
    let script = format!("{}sleep 30", beats.start_all());
    let request = ExecRequest { timeout: Duration::from_secs(60), ..script_request(project, &script) };
    let out = run_cancelled_once_started(executor, request, Duration::ZERO, case).await;
    assert_started(&out, case);
    assert_eq!(out.result.termination, Termination::Cancelled, "{case}: stderr {:?}", out.stderr());
    beats.assert_no_survivor(executor, project, &beats.forms(), case).await;
}

/// Runs `request` and cancels it `after` its stdout said `started`.
async fn run_cancelled_once_started(
    executor: &dyn Executor,
    request: ExecRequest,
    after: Duration,
    what: &str,
) -> Outcome {
    let sink = Arc::new(RecordingSink::new());
    let cancel = CancellationToken::new();
    let (out, ()) = tokio::join!(
        run_into(executor, request, cancel.clone(), Arc::clone(&sink), what),
        cancel_once_started(&sink, &cancel, after)
    );
    out
}

/// The command keeps forking (and ignores SIGTERM, as do the loops it starts) while it is being
/// killed: a kill that takes one snapshot of the processes misses those forked during it.
async fn nothing_outlives_a_command_that_keeps_forking(executor: &dyn Executor, project: &ProjectName) {
    let case = "fork storm";
    let beats = Heartbeats::new("storm");
    let file = beats.file("storm");
    // Bounded, so that a failed check leaves nothing behind for long: every 25th child is a
    // heartbeat loop of its own, the rest short sleeps.
    let spawn_loop = format!("(sh -c '{}' >/dev/null 2>&1 &)", Heartbeats::beat_loop(&file, true));
    let script = format!(
        "trap '' TERM\n{spawn_loop}\n\
         n=0; while [ ! -s {file} ]; do n=$((n+1)); if [ $n -gt 100 ]; then echo 'loops never started' >&2; exit 98; fi; sleep 0.1; done\n\
         echo started\n\
         i=0; while [ $i -lt 4000 ]; do i=$((i+1)); if [ $((i % 25)) = 0 ]; then {spawn_loop}; else (sleep 2 &); fi; done"
    );
    let request = ExecRequest { timeout: Duration::from_secs(60), ..script_request(project, &script) };
    let out = run_cancelled_once_started(executor, request, Duration::from_millis(300), case).await;
    assert_started(&out, case);
    assert_eq!(
        out.result.termination,
        Termination::Cancelled,
        "{case}: MUST still be forking when cancelled (stderr {:?})",
        out.stderr()
    );
    beats.assert_no_survivor(executor, project, &[("forked while being killed", file)], case).await;
}
