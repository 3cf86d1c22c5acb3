//! The helper: the process the server starts for each sandboxed command. It creates the
//! command's namespaces, writes their id maps from outside, waits, and ends the way the
//! command ended, so the server sees the command's own exit code or signal.
//!
//! Process tree: server → helper (host namespaces, leads the command's process group) → init
//! (PID 1 of a new PID namespace, inside new user, mount, IPC, UTS and optionally network
//! namespaces) → the command. When init exits, the kernel kills every process left in the PID
//! namespace: that is what makes `setsid`, `nohup` and double forks die with the command.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sched::CloneFlags;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{kill, raise, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{getegid, geteuid, Pid};

use super::init;
use super::spec::{NetworkMode, Spec};
use super::sys;

/// Exit code of a helper whose sandbox could not be set up (the reason is on the report pipe).
pub(crate) const SETUP_FAILED: i32 = 126;

/// How init tells the helper the command's end: one kind byte and one value byte.
pub(crate) const ENDED_EXIT: u8 = 0;
/// The command died of the signal in the value byte.
pub(crate) const ENDED_SIGNAL: u8 = 1;

/// How the helper tells init that the id maps are written, and whether `setgroups` is allowed.
pub(crate) const MAPPED_PRIVILEGED: u8 = 1;
/// The maps are written by an unprivileged helper: `setgroups` is denied.
pub(crate) const MAPPED_UNPRIVILEGED: u8 = 2;

/// Signals that would otherwise end the helper before its command: the server's SIGTERM goes
/// to the whole process group, and init forwards it inside; the helper must outlive that.
pub(crate) const FORWARDED: [Signal; 6] =
    [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGUSR1, Signal::SIGUSR2];

/// Runs the helper for `spec`; returns the exit code when the command did not die of a signal.
pub(crate) fn run(spec: &Spec) -> i32 {
    // Set here rather than between the server's fork and exec, so the server can spawn the
    // helper with posix_spawn; a server that died before this line is caught by the pid check.
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || nix::unistd::getppid().as_raw() != spec.server_pid {
        return SETUP_FAILED;
    }
    if let Err(e) = sys::close_descriptors_except(&[spec.report_fd, spec.ended_fd]) {
        // Nothing can be reported yet: the report descriptor may be among those not closed.
        eprintln!("rdev-api sandbox: cannot close inherited descriptors: {e}");
        return SETUP_FAILED;
    }
    let (report, to_server) = match (sys::adopt_descriptor(spec.report_fd), sys::adopt_descriptor(spec.ended_fd)) {
        (Ok(report), Ok(ended)) => (File::from(report), File::from(ended)),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("rdev-api sandbox: no report or end descriptor ({}, {}): {e}", spec.report_fd, spec.ended_fd);
            return SETUP_FAILED;
        }
    };
    match start(spec, &report) {
        Ok(init) => {
            drop(report);
            detach_stdio();
            wait_for(init, to_server)
        }
        Err(reason) => {
            let _ = (&report).write_all(reason.as_bytes());
            SETUP_FAILED
        }
    }
}

/// A started init and the pipe on which it reports the command's end.
struct Started {
    pid: Pid,
    ended: File,
    /// Open for as long as the helper lives: init checks it after its parent-death signal was
    /// reset by an id change.
    _lifeline: File,
}

fn start(spec: &Spec, report: &File) -> Result<Started, String> {
    let mut mask = SigSet::empty();
    FORWARDED.iter().for_each(|s| mask.add(*s));
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .map_err(|e| format!("sandbox: cannot block signals: {e}"))?;
    let (go_read, go_write) = pipe()?;
    let (ended_read, ended_write) = pipe()?;
    let mut flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if spec.network == NetworkMode::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let (mut go_read, mut ended_write) = (Some(go_read), Some(ended_write));
    // The helper's own ends must be closed in init, or init would never see the helper go;
    // so must the server's end pipe, or the command could write an end of its own choosing.
    let parent_ends = [go_write.as_raw_fd(), ended_read.as_raw_fd(), spec.ended_fd];
    let pid = sys::clone_process(flags, || {
        for fd in parent_ends {
            let _ = nix::unistd::close(fd);
        }
        let (Some(go), Some(ended)) = (go_read.take(), ended_write.take()) else { return 125 };
        init::run(spec, report, go, ended) as isize
    })
    .map_err(|e| namespaces_refused(&sys::errno_error(e)))?;
    drop(go_read.take());
    drop(ended_write.take());
    let privileged = geteuid().is_root();
    if privileged {
        hand_over_pipes(spec);
    }
    if let Err(e) = write_id_maps(pid, spec, privileged) {
        let _ = kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        return Err(format!("sandbox: cannot map the command's user and group ids: {e}"));
    }
    let go = [if privileged { MAPPED_PRIVILEGED } else { MAPPED_UNPRIVILEGED }];
    let mut lifeline = File::from(go_write);
    lifeline.write_all(&go).map_err(|e| format!("sandbox: init went away during set-up: {e}"))?;
    Ok(Started { pid, ended: File::from(ended_read), _lifeline: lifeline })
}

/// The start-up refusal's text: what failed and the two ways out.
fn namespaces_refused(error: &std::io::Error) -> String {
    format!(
        "sandbox: cannot create user, PID and mount namespaces ({error}); the kernel or the container \
         forbids them (user.max_user_namespaces, a seccomp profile or an AppArmor rule)"
    )
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("sandbox: cannot create a pipe: {e}"))
}

/// Maps the command's uid and gid into init's user namespace. Root maps the configured ids to
/// themselves; an unprivileged server may only map its own ids, to the configured ones inside.
fn write_id_maps(pid: Pid, spec: &Spec, privileged: bool) -> std::io::Result<()> {
    let proc = format!("/proc/{pid}");
    let (outside_uid, outside_gid) =
        if privileged { (spec.uid, spec.gid) } else { (geteuid().as_raw(), getegid().as_raw()) };
    if !privileged {
        std::fs::write(format!("{proc}/setgroups"), "deny")?;
    }
    std::fs::write(format!("{proc}/uid_map"), format!("{} {outside_uid} 1\n", spec.uid))?;
    std::fs::write(format!("{proc}/gid_map"), format!("{} {outside_gid} 1\n", spec.gid))
}

/// Gives the command's stdio pipes (made by the server, so owned by root, mode 0600) to the
/// command's user, so that reopening them (`echo > /dev/stderr`) works as it does in a pod.
/// They belong to this one command; nothing else is handed over.
fn hand_over_pipes(spec: &Spec) {
    for fd in 0..=2 {
        let is_pipe = nix::sys::stat::fstat(fd).is_ok_and(|st| {
            nix::sys::stat::SFlag::from_bits_truncate(st.st_mode) & nix::sys::stat::SFlag::S_IFMT
                == nix::sys::stat::SFlag::S_IFIFO
        });
        if is_pipe {
            let owner = (Some(nix::unistd::Uid::from_raw(spec.uid)), Some(nix::unistd::Gid::from_raw(spec.gid)));
            let _ = nix::unistd::fchown(fd, owner.0, owner.1);
        }
    }
}

/// Points the helper's own standard descriptors at /dev/null, so the output pipes close as
/// soon as the last process of the command is gone, not when the helper exits.
fn detach_stdio() {
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        for fd in 0..=2 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
}

/// Passes the command's end to the server as soon as init reports it (every process of the
/// command is gone by then), then waits for init, whose exit tears the namespaces down, and
/// ends as the command ended.
fn wait_for(init: Started, mut to_server: File) -> i32 {
    let Started { pid, mut ended, _lifeline } = init;
    let mut end = [0u8; 2];
    let reported = ended.read_exact(&mut end).is_ok();
    if reported {
        // The server may not be listening (it also learns the end from this exit): no matter.
        let _ = to_server.write_all(&end);
    }
    drop(to_server);
    let status = loop {
        match waitpid(pid, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other,
        }
    };
    match (reported, end, status) {
        (true, [ENDED_EXIT, code], _) => i32::from(code),
        (true, [ENDED_SIGNAL, signal], _) => die_of(i32::from(signal)),
        (_, _, Ok(WaitStatus::Exited(_, code))) => code,
        (_, _, Ok(WaitStatus::Signaled(_, signal, _))) => die_of(signal as i32),
        _ => SETUP_FAILED,
    }
}

/// Ends the helper by `signal`, so the server sees the command's own death; core dumps off.
fn die_of(signal: i32) -> i32 {
    let Ok(signal) = Signal::try_from(signal) else { return 128 + signal };
    let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
    let _ = sys::default_signal(signal);
    let mut mask = SigSet::empty();
    mask.add(signal);
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&mask), None);
    let _ = raise(signal);
    128 + signal as i32
}
