//! The shell wrappers that give `pods/exec` what it lacks: a working directory, an environment,
//! a process group that can be killed, and a clear "could not start" signal.
//!
//! Every piece of user data (argv, env, cwd) travels as a positional parameter of `sh -c`, never
//! inside the script text, so nothing needs quoting and nothing can be injected: the scripts
//! below are constants. kube-rs URL-encodes each `command=` query value.

use domain::ports::ExecRequest;

/// Runs the user's command. Positional parameters:
/// `$1` control tag, `$2` bookkeeping dir, `$3` workdir to enter first ("" = stay where exec
/// started, the container's `workingDir`), `$4` cwd ("" = none), `$5` `1` when stdin is
/// attached, `$6` number of `NAME=value` pairs, then the pairs, then argv.
///
/// Before anything of the user's runs it prints exactly one control line on stderr:
/// `<tag> ok` or `<tag> fail <what>` (`workdir`, `cwd`, `program`, `state`). The command itself
/// runs in a child `sh` that records its pid (which becomes the process group and session id
/// through `setsid`, as the child is never a group leader) and execs the program. A kill flag
/// written by [`KILL_SCRIPT`] before the pid file exists stops it from starting at all.
pub(crate) const RUN_SCRIPT: &str = r#"tag=$1 dir=$2 wd=$3 cwd=$4 in=$5 n=$6
shift 6
fail() { printf '%s fail %s\n' "$tag" "$1" >&2; exit 127; }
unset CDPATH
sh_bin=$(command -v sh) || sh_bin=/bin/sh
setsid_bin=$(command -v setsid) || setsid_bin=
if [ -n "$wd" ]; then cd "$wd" >/dev/null 2>&1 || fail workdir; fi
if [ -n "$cwd" ]; then cd "$cwd" >/dev/null 2>&1 || fail cwd; fi
mkdir -p "$dir" 2>/dev/null || fail state
sys_path=$PATH
i=0
while [ "$i" -lt "$n" ]; do export "$1" || fail env; shift; i=$((i + 1)); done
found=
case $1 in
  */*) if [ -f "$1" ] && [ -x "$1" ]; then found=1; fi ;;
  *)
    set -f; old_ifs=$IFS; IFS=:
    for d in $PATH; do
      if [ -f "${d:-.}/$1" ] && [ -x "${d:-.}/$1" ]; then found=1; break; fi
    done
    IFS=$old_ifs; set +f ;;
esac
if [ -z "$found" ]; then PATH=$sys_path rm -rf "$dir"; fail program; fi
printf '%s ok\n' "$tag" >&2
if [ "$in" = 1 ]; then
  "$sh_bin" -c 'echo "$$" > "$1/pgid"; if [ -e "$1/kill" ]; then exit 137; fi; shift; exec "$@"' rdev-cmd "$dir" ${setsid_bin:+"$setsid_bin" --} "$@"
else
  "$sh_bin" -c 'echo "$$" > "$1/pgid"; if [ -e "$1/kill" ]; then exit 137; fi; shift; exec "$@"' rdev-cmd "$dir" ${setsid_bin:+"$setsid_bin" --} "$@" </dev/null
fi
rc=$?
PATH=$sys_path rm -rf "$dir"
exit "$rc"
"#;

/// Kills a command started by [`RUN_SCRIPT`]. Positional parameters: `$1` bookkeeping dir,
/// `$2` grace in tenths of a second. Raises the kill flag first, then reads the pid file: the
/// run script writes the pid first, then reads the flag, so one of them always sees the other.
/// SIGTERM to the group, up to the grace for it to empty, then SIGKILL; a command that could
/// not get its own group (no `setsid` in the image) is signalled by pid.
pub(crate) const KILL_SCRIPT: &str = r#"dir=$1 grace=$2
mkdir -p "$dir" 2>/dev/null
: > "$dir/kill" 2>/dev/null
[ -s "$dir/pgid" ] || exit 0
p=$(cat "$dir/pgid")
case $p in ''|*[!0-9]*) exit 0 ;; esac
alive() { kill -0 -"$p" 2>/dev/null || kill -0 "$p" 2>/dev/null; }
kill -TERM -"$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null
i=0
while [ "$i" -lt "$grace" ] && alive; do sleep 0.1 2>/dev/null || sleep 1; i=$((i + 1)); done
kill -KILL -"$p" 2>/dev/null
kill -KILL "$p" 2>/dev/null
exit 0
"#;

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
    let mut argv = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        RUN_SCRIPT.to_owned(),
        "rdev-exec".to_owned(),
        control_tag(request),
        state_dir(state_root, request),
        if enter_workdir { request.workdir.clone() } else { String::new() },
        request.cwd.clone().unwrap_or_default(),
        if request.stdin.is_some() { "1" } else { "0" }.to_owned(),
    ];
    let env: Vec<String> = request.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    argv.push(env.len().to_string());
    argv.extend(env);
    argv.extend(request.argv.iter().cloned());
    argv
}

/// The exec argv that kills the command `request` started, pacing SIGTERM → SIGKILL by `grace`.
pub(crate) fn kill_argv(request: &ExecRequest, state_root: &str, grace: std::time::Duration) -> Vec<String> {
    let tenths = (grace.as_millis() / 100).max(1);
    vec![
        "sh".to_owned(),
        "-c".to_owned(),
        KILL_SCRIPT.to_owned(),
        "rdev-kill".to_owned(),
        state_dir(state_root, request),
        tenths.to_string(),
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

    #[tokio::test]
    async fn kill_script_kills_the_whole_group_and_a_late_start_never_runs() {
        let dir = tempfile::tempdir().unwrap();
        let root = state_root(&dir);
        let req = request(&["sh", "-c", "sh -c 'sleep 1; touch marker' & sleep 30"]);
        let run = tokio::spawn(run_locally(run_argv(&req, &root, false), dir.path().to_path_buf().leak(), None));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let killed = run_locally(kill_argv(&req, &root, Duration::from_millis(500)), dir.path(), None).await;
        assert_eq!(killed.code, Some(0), "{}", killed.stderr);
        let ran = tokio::time::timeout(Duration::from_secs(5), run).await.unwrap().unwrap();
        assert_eq!(ran.code, Some(128 + 15), "SIGTERM ended it: {}", ran.stderr);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(!dir.path().join("marker").exists(), "the background child died with its group");

        // A kill that arrives before the command started leaves a flag the start respects.
        let late = request(&["touch", "late-marker"]);
        run_locally(kill_argv(&late, &root, Duration::from_millis(100)), dir.path(), None).await;
        let ran = run_locally(run_argv(&late, &root, false), dir.path(), None).await;
        assert_eq!(ran.code, Some(137));
        assert!(!dir.path().join("late-marker").exists());
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
