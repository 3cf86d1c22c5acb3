//! The shell wrappers that give `pods/exec` what it lacks: a working directory, an environment,
//! a clear "could not start" signal, and a way to kill every process a command started.
//!
//! Every piece of user data (argv, env, cwd) travels as a positional parameter of `sh -c`, never
//! inside the script text, so nothing needs quoting and nothing can be injected: the scripts
//! below are constants. kube-rs URL-encodes each `command=` query value.
//!
//! **Tracking.** A process group does not hold a command's processes: `setsid`, `nohup` plus a
//! new session, or a double fork leave it. So every process of a command carries an environment
//! cookie, `RDEV_COMMAND_TRACKING_ID=<command id>` ([`TRACKING_ENV`]), which children inherit
//! (Jenkins' ProcessTreeKiller, the GitHub runner's `RUNNER_TRACKING_ID`). A sweep finds them by
//! scanning the pod's `/proc/*/environ` for that exact entry. One scan is not enough: a process
//! can fork while the scan runs (actions/runner#4601). So the sweep SIGSTOPs every match, scans
//! again until a pass finds nothing it has not stopped (stopped processes cannot fork), and only
//! then SIGKILLs them all. The wrapper itself never carries the cookie, so it survives its own
//! sweep. A process that clears or rewrites its own environment on purpose escapes; the pod stays
//! the boundary for that.

use domain::ports::ExecRequest;

/// The environment variable that marks every process of one command; its value is the command
/// id. Commands see it too. The scripts below spell it out literally (a test checks they agree).
pub const TRACKING_ENV: &str = "RDEV_COMMAND_TRACKING_ID";

/// Shell functions both scripts share; they expect `$id` (the command id) to be set.
///
/// `scan " pid pid " [SIGNAL]` looks at every process not listed and appends `+<pid> ` to `$out`
/// for each one whose `/proc/<pid>/environ` holds exactly the cookie, sending it SIGNAL. It
/// sets `$out` rather than printing so that callers need no command substitution (one fork
/// less per pass). Where grep knows `-z` (GNU, busybox with its compat options) one `grep -l
/// -z -x` over all of `/proc` does it; that same grep proves it understood `-z` by also
/// matching its own `/proc/self/cmdline`, whose NUL-separated arguments include the cookie as
/// one whole record, so no separate probe runs (a grep without `-z` fails or, NUL-blind, does
/// not match there). Elsewhere each process is checked with `tr | grep -x` (a NUL-blind grep
/// would only look at the first variable), sending SIGNAL as soon as one is seen, and
/// non-matches are noted as `-<pid> ` so that a sweep does not check them again.
///
/// `sweep` stops every match, rescans until a pass finds no match it has not stopped (at most
/// 100 passes, so a process that cannot be stopped does not hang it), then kills everything it
/// stopped. SIGKILL lands asynchronously, so when it killed anything it rescans (up to 20
/// times) until nothing carries the cookie: whoever waits for the wrapper then finds the
/// command's processes gone, not dying. `any_marked` says whether any process still carries
/// the cookie.
macro_rules! sweep_functions {
    () => {
        r#"cookie="RDEV_COMMAND_TRACKING_ID=$id"
scan() {
  out=
  found=$(grep -l -z -x -F -e "$cookie" /proc/self/cmdline /proc/[0-9]*/environ 2>/dev/null)
  case $found in
  /proc/self/cmdline*)
    for f in $found; do
      case $f in /proc/self/*) continue ;; esac
      p=${f#/proc/}; p=${p%/environ}
      case $1 in *" $p "*) continue ;; esac
      if [ -n "$2" ]; then kill "-$2" "$p" 2>/dev/null; fi
      out="$out+$p "
    done ;;
  *)
    for f in /proc/[0-9]*/environ; do
      p=${f#/proc/}; p=${p%/environ}
      case $1 in *" $p "*) continue ;; esac
      if tr '\000' '\n' 2>/dev/null < "$f" | grep -q -x -F -e "$cookie"; then
        if [ -n "$2" ]; then kill "-$2" "$p" 2>/dev/null; fi
        out="$out+$p "
      else
        out="$out-$p "
      fi
    done ;;
  esac
}
any_marked() { scan ' '; case $out in *+*) return 0 ;; esac; return 1; }
sweep() {
  seen=' ' hit=' ' pass=0
  while [ "$pass" -lt 100 ]; do
    new=
    scan "$seen" STOP
    for w in $out; do
      case $w in +*) new="$new${w#+} " ;; esac
      seen="$seen${w#[+-]} "
    done
    [ -n "$new" ] || break
    hit="$hit$new" pass=$((pass + 1))
  done
  [ "$hit" != ' ' ] || return 0
  kill -KILL $hit 2>/dev/null
  pass=0
  while [ "$pass" -lt 20 ] && any_marked; do pass=$((pass + 1)); done
}
"#
    };
}

/// Runs the user's command. Positional parameters: `$1` control tag, `$2` bookkeeping dir, `$3`
/// command id (the cookie's value), `$4` workdir to enter first ("" = stay where exec started,
/// the container's `workingDir`), `$5` cwd ("" = none), `$6` `1` when stdin is attached, then
/// the `NAME=value` pairs, then `--`, the control tag and the command id again, then argv.
///
/// The wrapper enters the directories and checks that the bookkeeping root exists (creating it
/// once per container) and is writable, so that a kill can raise its flag there; the
/// per-command dir itself is only made by a kill. Then it starts a child `sh`
/// with the cookie in its environment. The child checks the kill flag (a [`KILL_SCRIPT`] that
/// ran before it existed left one; the kill raises the flag before it scans, so either the scan
/// sees the child or the child sees the flag), exports the pairs, re-asserts the cookie (a pair
/// may not override it), finds the program, prints exactly one control line on stderr, `<tag>
/// ok` or `<tag> fail <what>` (`workdir`, `cwd`, `program`, `state`, `env`), and execs the
/// program in a session of its own when `setsid` exists (so a command's `kill 0` cannot reach
/// the wrapper). The pairs are exported only in the child so that no user variable can change
/// the wrapper's own (`dir`, `id`, …).
///
/// When the program exits, however it ends, the wrapper sweeps every process that still
/// carries the cookie (background children, daemons), removes the bookkeeping dir if a kill
/// made one, and only then exits with the program's status: nothing of a command outlives it.
///
/// Every step is a shell builtin where one will do (`command -v`, `test`), because each fork or
/// exec costs about as much as the command `true` itself: a run of `true` forks three times
/// (the child `sh`, the program lookup's subshell, the sweep's `grep`) and execs `sh`, `setsid`,
/// the program and `grep`.
pub(crate) const RUN_SCRIPT: &str = concat!(
    r#"tag=$1 dir=$2 id=$3 wd=$4 cwd=$5 in=$6
shift 6
fail() { printf '%s fail %s\n' "$tag" "$1" >&2; exit 127; }
unset CDPATH RDEV_COMMAND_TRACKING_ID
if command -v sh >/dev/null 2>&1; then sh_bin=sh; else sh_bin=/bin/sh; fi
if [ -n "$wd" ]; then cd "$wd" >/dev/null 2>&1 || fail workdir; fi
if [ -n "$cwd" ]; then cd "$cwd" >/dev/null 2>&1 || fail cwd; fi
root=${dir%/*}
if [ ! -d "${root:=/}" ]; then mkdir -p "$root" 2>/dev/null || fail state; fi
[ -w "$root" ] && [ -x "$root" ] || fail state
"#,
    sweep_functions!(),
    r#"cmd='if [ -e "$1/kill" ]; then exit 137; fi
shift
while [ "$1" != -- ]; do
  if ! export "$1" 2>/dev/null; then
    while [ "$1" != -- ]; do shift; done
    printf "%s fail env\n" "$2" >&2; exit 127
  fi
  shift
done
shift
export RDEV_COMMAND_TRACKING_ID="$2"
if ! (set -f; IFS=:
  case $3 in */*) [ -f "$3" ] && [ -x "$3" ]; exit ;; esac
  for d in $PATH; do if [ -f "${d:-.}/$3" ] && [ -x "${d:-.}/$3" ]; then exit 0; fi; done
  exit 1); then
  printf "%s fail program\n" "$1" >&2; exit 127
fi
printf "%s ok\n" "$1" >&2
shift 2
if command -v setsid >/dev/null 2>&1; then exec setsid -- "$@"; fi
exec "$@"'
if [ "$in" = 1 ]; then
  RDEV_COMMAND_TRACKING_ID=$id "$sh_bin" -c "$cmd" rdev-cmd "$dir" "$@"
else
  RDEV_COMMAND_TRACKING_ID=$id "$sh_bin" -c "$cmd" rdev-cmd "$dir" "$@" </dev/null
fi
rc=$?
sweep
if [ -e "$dir" ]; then rm -rf "$dir"; fi
exit "$rc"
"#
);

/// Kills a command started by [`RUN_SCRIPT`]. Positional parameters: `$1` bookkeeping dir,
/// `$2` grace in tenths of a second, `$3` command id. Raises the kill flag first (see
/// [`RUN_SCRIPT`] for the race it settles), then SIGTERMs every process carrying the cookie,
/// gives them up to the grace to exit, and sweeps whatever is left (stop, rescan until stable,
/// SIGKILL). When the main process dies the wrapper sweeps at once too, so the grace only lasts
/// as long as the main process does.
pub(crate) const KILL_SCRIPT: &str = concat!(
    r#"dir=$1 grace=$2 id=$3
mkdir -p "$dir" 2>/dev/null
: > "$dir/kill" 2>/dev/null
"#,
    sweep_functions!(),
    r#"scan ' ' TERM
case $out in *+*) ;; *) exit 0 ;; esac
i=0
while [ "$i" -lt "$grace" ] && any_marked; do sleep 0.1 2>/dev/null || sleep 1; i=$((i + 1)); done
sweep
exit 0
"#
);

/// What the run script said on its control line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Control {
    /// The program was found and is starting.
    Started,
    /// It could not start; the text says why, in the request's own terms.
    Failed(String),
}

/// The unique tag of one command's control line; a user's output cannot predict it in advance.
pub(crate) fn control_tag(request: &ExecRequest) -> String {
    format!("rdev-exec:{}", request.command_id)
}

/// The bookkeeping directory of one command inside the container.
pub(crate) fn state_dir(root: &str, request: &ExecRequest) -> String {
    format!("{}/{}", root.trim_end_matches('/'), request.command_id)
}

/// The exec argv that runs `request`. `enter_workdir` is false when the exec already starts in
/// the project's workdir (the pod was created with it as `workingDir`).
pub(crate) fn run_argv(request: &ExecRequest, state_root: &str, enter_workdir: bool) -> Vec<String> {
    let tag = control_tag(request);
    let id = request.command_id.to_string();
    let mut argv = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        RUN_SCRIPT.to_owned(),
        "rdev-exec".to_owned(),
        tag.clone(),
        state_dir(state_root, request),
        id.clone(),
        if enter_workdir { request.workdir.clone() } else { String::new() },
        request.cwd.clone().unwrap_or_default(),
        if request.stdin.is_some() { "1" } else { "0" }.to_owned(),
    ];
    // Every pair holds a `=`, so the first bare `--` always ends them.
    argv.extend(request.env.iter().map(|(k, v)| format!("{k}={v}")));
    argv.extend(["--".to_owned(), tag, id]);
    argv.extend(request.argv.iter().cloned());
    argv
}

/// The exec argv that kills every process of the command `request` started, pacing SIGTERM →
/// SIGKILL by `grace`.
pub(crate) fn kill_argv(request: &ExecRequest, state_root: &str, grace: std::time::Duration) -> Vec<String> {
    let tenths = (grace.as_millis() / 100).max(1);
    vec![
        "sh".to_owned(),
        "-c".to_owned(),
        KILL_SCRIPT.to_owned(),
        "rdev-kill".to_owned(),
        state_dir(state_root, request),
        tenths.to_string(),
        request.command_id.to_string(),
    ]
}

/// Parses the control line (without its newline). `None` when the line is not ours: then the
/// wrapper itself never ran (no `sh` in the image, the exec was refused) and the line is output.
pub(crate) fn parse_control(line: &[u8], tag: &str, request: &ExecRequest) -> Option<Control> {
    let line = std::str::from_utf8(line).ok()?;
    let rest = line.strip_prefix(tag)?.strip_prefix(' ')?;
    if rest == "ok" {
        return Some(Control::Started);
    }
    let what = rest.strip_prefix("fail ")?;
    Some(Control::Failed(start_failure_text(what, request)))
}

/// The client-facing reason for a failed start, built here (not in the shell) so that paths with
/// newlines or odd bytes are reported exactly.
fn start_failure_text(what: &str, request: &ExecRequest) -> String {
    let program = request.argv.first().map(String::as_str).unwrap_or_default();
    match what {
        "workdir" => format!("the project workdir {} does not exist or is not a directory", request.workdir),
        "cwd" => format!(
            "working directory {} does not exist or is not a directory",
            request.cwd.as_deref().unwrap_or_default()
        ),
        "program" => format!("cannot start {program}: not found or not executable"),
        "env" => "cannot set the command's environment".to_owned(),
        "state" => "cannot create the command's bookkeeping directory in the pod".to_owned(),
        other => format!("the command could not start ({other})"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::BTreeMap;
    use std::process::Stdio;
    use std::time::Duration;

    use domain::command::EnvMap;
    use domain::ids::CommandId;
    use tokio::io::AsyncWriteExt;

    use super::*;

    fn request(argv: &[&str]) -> ExecRequest {
        ExecRequest {
            command_id: CommandId::generate(),
            project: domain::testing::project_name("wrap"),
            workdir: "/workspace".into(),
            argv: argv.iter().map(|a| (*a).to_owned()).collect(),
            env: EnvMap::default(),
            cwd: None,
            stdin: None,
            timeout: Duration::from_secs(10),
            max_output_bytes: 1024,
        }
    }

    struct Ran {
        code: Option<i32>,
        stdout: String,
        stderr: String,
    }

    /// Runs the wrapper as a local process, the way kube-sim (or a kubelet) would.
    async fn run_locally(argv: Vec<String>, cwd: &std::path::Path, stdin: Option<&[u8]>) -> Ran {
        let mut child = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .current_dir(cwd)
            .process_group(0)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(bytes).await.unwrap();
        }
        let out = child.wait_with_output().await.unwrap();
        Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn state_root(dir: &tempfile::TempDir) -> String {
        dir.path().join("state").display().to_string()
    }

    #[tokio::test]
    async fn argv_reaches_the_program_verbatim_after_the_control_line() {
        let dir = tempfile::tempdir().unwrap();
        let odd = ["two  spaces", "it's \"quoted\"", "$HOME", "*", "line\nbreak", "-n", "a=b"];
        let mut argv = vec!["printf", "[%s]"];
        argv.extend(odd);
        let req = request(&argv);
        let ran = run_locally(run_argv(&req, &state_root(&dir), false), dir.path(), None).await;
        assert_eq!(ran.code, Some(0), "{}", ran.stderr);
        let expected: String = odd.iter().map(|a| format!("[{a}]")).collect();
        assert_eq!(ran.stdout, expected);
        assert_eq!(ran.stderr, format!("{} ok\n", control_tag(&req)));
        assert!(!dir.path().join("state").join(req.command_id.to_string()).exists(), "bookkeeping removed");
    }

    #[tokio::test]
    async fn env_cwd_and_stdin_apply() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub dir")).unwrap();
        let vars =
            BTreeMap::from([("SPACED".to_owned(), "a 'b' \"c\" = $d".to_owned()), ("EMPTY".to_owned(), String::new())]);
        let req = ExecRequest {
            env: EnvMap::parse(vars).unwrap(),
            cwd: Some("sub dir".into()),
            stdin: Some(b"piped".to_vec()),
            ..request(&["sh", "-c", "pwd; echo \"$SPACED|$EMPTY|${EMPTY+set}\"; cat"])
        };
        let ran = run_locally(run_argv(&req, &state_root(&dir), false), dir.path(), Some(b"piped")).await;
        assert_eq!(ran.code, Some(0), "{}", ran.stderr);
        let pwd = dir.path().join("sub dir").canonicalize().unwrap();
        assert_eq!(ran.stdout, format!("{}\na 'b' \"c\" = $d||set\npiped", pwd.display()));
    }

    #[tokio::test]
    async fn exit_codes_pass_through() {
        let dir = tempfile::tempdir().unwrap();
        for code in [0, 1, 3, 255] {
            let req = request(&["sh", "-c", &format!("exit {code}")]);
            let ran = run_locally(run_argv(&req, &state_root(&dir), false), dir.path(), None).await;
            assert_eq!(ran.code, Some(code));
        }
    }

    #[tokio::test]
    async fn start_failures_are_announced_on_the_control_line() {
        let dir = tempfile::tempdir().unwrap();
        let root = state_root(&dir);
        let cases = [
            (ExecRequest { cwd: Some("missing\nodd".into()), ..request(&["echo", "ran"]) }, false, "cwd"),
            (request(&["rdev-no-such-program-xyz"]), false, "program"),
            (request(&["./not-there"]), false, "program"),
            (ExecRequest { workdir: "/rdev-missing-workdir".into(), ..request(&["true"]) }, true, "workdir"),
        ];
        for (req, enter, what) in cases {
            let ran = run_locally(run_argv(&req, &root, enter), dir.path(), None).await;
            assert_eq!(ran.code, Some(127));
            assert_eq!(ran.stdout, "", "nothing ran");
            let line = ran.stderr.strip_suffix('\n').unwrap();
            let tag = control_tag(&req);
            let Some(Control::Failed(why)) = parse_control(line.as_bytes(), &tag, &req) else {
                panic!("{what}: {line:?}")
            };
            assert!(line.ends_with(what), "{line}");
            assert!(!why.is_empty());
        }
    }

    /// Starts three children that escape a process group (a new session, `nohup` in a new
    /// session, a double fork), each of which would create `<marker>-<n>` after a second.
    fn escaping_children(marker: &str) -> String {
        format!(
            "setsid sh -c 'sleep 1; touch {marker}-1' >/dev/null 2>&1 & \
             nohup setsid sh -c 'sleep 1; touch {marker}-2' >/dev/null 2>&1 & \
             (sh -c 'sleep 1; touch {marker}-3' >/dev/null 2>&1 &); sleep 0.2"
        )
    }

    fn markers_left(dir: &std::path::Path, marker: &str) -> Vec<String> {
        (1..=3).map(|n| format!("{marker}-{n}")).filter(|m| dir.join(m).exists()).collect()
    }

    /// Pids of the processes that carry the command's cookie, read the way the sweep reads them.
    fn cookie_holders(req: &ExecRequest) -> Vec<String> {
        let cookie = format!("{TRACKING_ENV}={}", req.command_id).into_bytes();
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_owned();
                name.parse::<u32>().ok()?;
                let environ = std::fs::read(e.path().join("environ")).ok()?;
                environ.split(|b| *b == 0).any(|v| v == cookie.as_slice()).then_some(name)
            })
            .collect()
    }

    #[test]
    fn the_scripts_spell_the_cookie_like_the_constant() {
        for script in [RUN_SCRIPT, KILL_SCRIPT] {
            assert!(script.contains(&format!("cookie=\"{TRACKING_ENV}=$id\"")));
        }
        assert!(RUN_SCRIPT.contains(&format!("export {TRACKING_ENV}=\"$2\"")));
        assert!(RUN_SCRIPT.contains(&format!("{TRACKING_ENV}=$id \"$sh_bin\"")));
    }

    #[tokio::test]
    async fn children_that_left_the_group_die_when_the_command_exits() {
        let dir = tempfile::tempdir().unwrap();
        let req = request(&["sh", "-c", &format!("{}; exit 3", escaping_children("exited"))]);
        let started = std::time::Instant::now();
        let ran = run_locally(run_argv(&req, &state_root(&dir), false), dir.path(), None).await;
        assert_eq!(ran.code, Some(3), "the command's own status: {}", ran.stderr);
        assert!(started.elapsed() < Duration::from_secs(1), "the sweep is quick: {:?}", started.elapsed());
        assert!(cookie_holders(&req).is_empty(), "nothing carries the cookie any more");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(markers_left(dir.path(), "exited"), Vec::<String>::new(), "no child outlived the command");
    }

    #[tokio::test]
    async fn kill_script_kills_every_process_and_a_late_start_never_runs() {
        let dir = tempfile::tempdir().unwrap();
        let root = state_root(&dir);
        let req = request(&["sh", "-c", &format!("{}; sleep 30", escaping_children("killed"))]);
        let run = tokio::spawn(run_locally(run_argv(&req, &root, false), dir.path().to_path_buf().leak(), None));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let killed = run_locally(kill_argv(&req, &root, Duration::from_millis(500)), dir.path(), None).await;
        assert_eq!(killed.code, Some(0), "{}", killed.stderr);
        let ran = tokio::time::timeout(Duration::from_secs(5), run).await.unwrap().unwrap();
        assert_eq!(ran.code, Some(128 + 15), "SIGTERM ended it: {}", ran.stderr);
        assert!(cookie_holders(&req).is_empty(), "nothing carries the cookie any more");
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(markers_left(dir.path(), "killed"), Vec::<String>::new(), "no child outlived the kill");

        // A kill that arrives before the command started leaves a flag the start respects.
        let late = request(&["touch", "late-marker"]);
        run_locally(kill_argv(&late, &root, Duration::from_millis(100)), dir.path(), None).await;
        let ran = run_locally(run_argv(&late, &root, false), dir.path(), None).await;
        assert_eq!(ran.code, Some(137));
        assert!(!dir.path().join("late-marker").exists());
    }

    #[tokio::test]
    async fn a_command_that_ignores_sigterm_and_keeps_forking_is_swept() {
        let dir = tempfile::tempdir().unwrap();
        let root = state_root(&dir);
        let storm = "trap '' TERM; i=0; while [ $i -lt 3000 ]; do (sleep 5 &); i=$((i+1)); done";
        let req = request(&["sh", "-c", storm]);
        let run = tokio::spawn(run_locally(run_argv(&req, &root, false), dir.path().to_path_buf().leak(), None));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let killed = run_locally(kill_argv(&req, &root, Duration::from_millis(200)), dir.path(), None).await;
        assert_eq!(killed.code, Some(0), "{}", killed.stderr);
        let ran = tokio::time::timeout(Duration::from_secs(5), run).await.unwrap().unwrap();
        assert_eq!(ran.code, Some(137), "SIGKILL ended it: {}", ran.stderr);
        assert_eq!(cookie_holders(&req), Vec::<String>::new(), "every forked child was swept");
    }

    #[tokio::test]
    async fn request_env_cannot_touch_the_wrapper_or_the_cookie() {
        let dir = tempfile::tempdir().unwrap();
        let vars = ["tag", "dir", "id", "in", "cwd", "rc", "cmd", "i", "d", "IFS", TRACKING_ENV]
            .map(|name| (name.to_owned(), "/".to_owned()));
        let req = ExecRequest {
            env: EnvMap::parse(BTreeMap::from(vars)).unwrap(),
            ..request(&["sh", "-c", &format!("echo \"$dir|$i|${TRACKING_ENV}\"; touch kept")])
        };
        let ran = run_locally(run_argv(&req, &state_root(&dir), false), dir.path(), None).await;
        assert_eq!(ran.code, Some(0), "{}", ran.stderr);
        assert_eq!(ran.stdout, format!("/|/|{}\n", req.command_id), "the pairs reach the program, the cookie wins");
        assert_eq!(ran.stderr, format!("{} ok\n", control_tag(&req)));
        assert!(dir.path().join("kept").exists(), "the wrapper's rm -rf used its own dir");
        assert!(!dir.path().join("state").join(req.command_id.to_string()).exists(), "bookkeeping removed");
    }

    #[test]
    fn foreign_lines_are_not_control_lines() {
        let req = request(&["true"]);
        let tag = control_tag(&req);
        assert_eq!(parse_control(format!("{tag} ok").as_bytes(), &tag, &req), Some(Control::Started));
        assert_eq!(parse_control(b"sh: not found", &tag, &req), None);
        assert_eq!(parse_control(format!("{tag}x ok").as_bytes(), &tag, &req), None);
        let other = control_tag(&request(&["true"]));
        assert_eq!(parse_control(format!("{other} ok").as_bytes(), &tag, &req), None);
    }
}
