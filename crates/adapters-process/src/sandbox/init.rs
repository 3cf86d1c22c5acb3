//! The sandbox's init (PID 1 of the command's PID namespace) and the command's last steps
//! before `exec`. Init builds the file system view, starts the command, forwards the signals
//! the server sends, reaps orphans, and reports the command's end to the helper. Its exit
//! ends the PID namespace, and with it every process the command left behind.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;

use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::stat::{umask, Mode};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Gid, Pid, Uid};

use super::helper::{ENDED_EXIT, ENDED_SIGNAL, FORWARDED, MAPPED_PRIVILEGED, SETUP_FAILED};
use super::spec::{NetworkMode, Spec};
use super::{landlock, mounts, sys};

/// Exit code of a command that could not be started (the reason is on the report pipe).
const START_FAILED: i32 = 127;

/// Runs init: `go` says when the id maps are written, `ended` carries the command's end.
pub(crate) fn run(spec: &Spec, report: &File, go: OwnedFd, ended: OwnedFd) -> i32 {
    match prepare(spec, go) {
        Ok(privileged) => supervise(spec, report, privileged, File::from(ended)),
        Err(reason) => {
            let _ = (&*report).write_all(reason.as_bytes());
            SETUP_FAILED
        }
    }
}

/// Everything before the command starts; `Ok(true)` when `setgroups` is allowed.
fn prepare(spec: &Spec, go: OwnedFd) -> Result<bool, String> {
    die_with_helper()?;
    let mut go = File::from(go);
    let mut mapped = [0u8; 1];
    go.read_exact(&mut mapped).map_err(|_| "sandbox: the helper went away during set-up".to_owned())?;
    let privileged = mapped[0] == MAPPED_PRIVILEGED;
    // Opened while init still has the server's identity: the workspaces root is private to it.
    let workspace = File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(&spec.workspace)
        .map_err(|e| format!("sandbox: cannot open the workspace {}: {e}", spec.workspace.display()))?;
    // Files created in the namespace's own tmpfs must belong to an id mapped in it, so init
    // takes the command's ids now; it keeps its capabilities in the namespace, because the
    // server's root is not the namespace's root (see user_namespaces(7) and capabilities(7)).
    become_command_user(spec, privileged).map_err(|e| format!("sandbox: cannot take the command's ids: {e}"))?;
    // Changing ids clears the parent-death signal: set it again, then make sure the helper did
    // not die in between (it holds the write end of `go` open for as long as it lives).
    die_with_helper()?;
    let helper_gone = nix::poll::poll(&mut [nix::poll::PollFd::new(go.as_fd(), nix::poll::PollFlags::POLLIN)], 0u8)
        .map_or(true, |ready| ready > 0);
    if helper_gone {
        return Err("sandbox: the helper went away during set-up".to_owned());
    }
    mounts::build(spec, &workspace)?;
    nix::unistd::sethostname(&spec.hostname).map_err(|e| format!("sandbox: cannot set the host name: {e}"))?;
    if spec.network == NetworkMode::None {
        sys::loopback_up().map_err(|e| format!("sandbox: cannot bring up the loopback interface: {e}"))?;
    }
    Ok(privileged)
}

/// SIGKILL when the helper dies, so a dead server (whose death kills the helper) leaves no
/// sandbox behind.
fn die_with_helper() -> Result<(), String> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("sandbox: parent-death signal: {e}"))
}

/// Takes the command's uid, gid and (where the maps allow) an empty group list.
fn become_command_user(spec: &Spec, privileged: bool) -> nix::Result<()> {
    if privileged {
        nix::unistd::setgroups(&[])?;
    }
    let (gid, uid) = (Gid::from_raw(spec.gid), Uid::from_raw(spec.uid));
    nix::unistd::setresgid(gid, gid, gid)?;
    nix::unistd::setresuid(uid, uid, uid)
}

/// Starts the command and stays with it until it ends.
fn supervise(spec: &Spec, report: &File, privileged: bool, mut ended: File) -> i32 {
    let mut waited = SigSet::empty();
    for signal in FORWARDED.iter().chain([&Signal::SIGCHLD]) {
        if let Err(e) = sys::catch_signal(*signal) {
            let _ = (&*report).write_all(format!("sandbox: cannot handle {signal}: {e}").as_bytes());
            return SETUP_FAILED;
        }
        waited.add(*signal);
    }
    if let Err(e) = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&waited), None) {
        let _ = (&*report).write_all(format!("sandbox: cannot block signals: {e}").as_bytes());
        return SETUP_FAILED;
    }
    let command = match sys::fork_single_threaded() {
        Ok(ForkResult::Child) => exec_command(spec, report, privileged),
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            let _ = (&*report).write_all(format!("sandbox: cannot start the command: {e}").as_bytes());
            return SETUP_FAILED;
        }
    };
    // Init keeps neither the report pipe nor the command's stdio: the server sees EOF on them
    // as soon as the command's processes are gone.
    let _ = nix::unistd::close(report.as_raw_fd());
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        for fd in 0..=2 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
    let end = wait_for_command(command, &waited);
    // The end is reported only once nothing of the command is left, so a server that records
    // it at once (before init's exit has torn the namespaces down) never records the end of a
    // command with a process still running.
    kill_the_rest();
    let _ = ended.write_all(&end);
    0
}

/// Kills every other process of the namespace and reaps them all: every process of a PID
/// namespace ends up a child of its init, so once `waitpid` finds no child, none is left.
fn kill_the_rest() {
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// Forwards signals to every process of the namespace and reaps them until `command` ends.
fn wait_for_command(command: Pid, waited: &SigSet) -> [u8; 2] {
    loop {
        match waited.wait() {
            Ok(Signal::SIGCHLD) => {
                if let Some(end) = reap(command) {
                    return end;
                }
            }
            // -1: every process of the namespace but init itself, whatever its group or session.
            Ok(signal) => {
                let _ = kill(Pid::from_raw(-1), signal);
            }
            Err(_) => {}
        }
    }
}

/// Reaps every finished child; the command's end once it is among them.
fn reap(command: Pid) -> Option<[u8; 2]> {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == command => {
                return Some([ENDED_EXIT, u8::try_from(code).unwrap_or(u8::MAX)]);
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == command => {
                return Some([ENDED_SIGNAL, u8::try_from(signal as i32).unwrap_or(u8::MAX)]);
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// The command's own process: confine it, then `exec`; on failure say why and exit 127.
fn exec_command(spec: &Spec, report: &File, privileged: bool) -> ! {
    let Err(reason) = confine_and_exec(spec, report, privileged);
    let _ = (&*report).write_all(reason.as_bytes());
    std::process::exit(START_FAILED)
}

fn confine_and_exec(spec: &Spec, report: &File, privileged: bool) -> Result<Infallible, String> {
    let setup = |what: &str, e: &dyn std::fmt::Display| format!("sandbox: {what}: {e}");
    for signal in FORWARDED.iter().chain([&Signal::SIGCHLD]) {
        sys::default_signal(*signal).map_err(|e| setup("signal defaults", &e))?;
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|e| setup("signal mask", &e))?;
    nix::fcntl::fcntl(report.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
        .map_err(|e| setup("report pipe", &e))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| setup("no_new_privs", &e))?;
    landlock::restrict(spec).map_err(|e| setup("landlock", &e))?;
    drop_capabilities(spec, privileged).map_err(|e| setup("dropping privileges", &e))?;
    umask(Mode::from_bits_truncate(0o022));
    nix::unistd::chdir(&spec.cwd).map_err(|errno| match errno {
        nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR => {
            format!("working directory {} does not exist or is not a directory", spec.cwd.display())
        }
        other => format!("working directory {} cannot be entered: {}", spec.cwd.display(), sys::errno_error(other)),
    })?;
    let program = spec.argv.first().ok_or_else(|| "the command is empty".to_owned())?;
    let shown = program.to_string_lossy();
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("cannot start {shown}: an argument contains a NUL byte"))?;
    let errno = match nix::unistd::execvp(&argv[0], &argv) {
        Err(errno) => errno,
        Ok(never) => match never {},
    };
    Err(format!("cannot start {shown}: {}", sys::errno_error(errno)))
}

/// Clears the bounding set, the supplementary groups (where the maps allow) and becomes the
/// command's uid and gid, so `exec` leaves the command with no capability at all.
fn drop_capabilities(spec: &Spec, privileged: bool) -> nix::Result<()> {
    let mut capability = 0;
    while sys::drop_bounding_capability(capability) {
        capability += 1;
    }
    // Setting the ids again clears the permitted and effective sets too: the command's uid is
    // now the namespace's only mapped one, and it is not 0.
    become_command_user(spec, privileged)?;
    nix::sys::prctl::set_keepcaps(false)
}
