//! The sandbox every command of the process executor runs in, so that a command sees what it
//! would see in its pod and nothing of the server: its own user, PID, mount, IPC and UTS
//! namespaces (and, with `PROCESS_NETWORK=none`, network), the project's workspace at the
//! project's workdir, the host's system directories read-only, never the server's identity,
//! `no_new_privs`, no capabilities, and Landlock where the kernel offers it.
//!
//! The sandbox is set up by a helper process started in a hidden mode ([`HELPER_MODE_ARG`]),
//! like Codex's `codex-linux-sandbox`, so no system package is needed: the small
//! [`HELPER_BINARY`] when it sits next to the server ([`sibling_helper`]), else the server's own
//! binary. It must start single-threaded, before any runtime: see [`helper_main`].

mod helper;
mod init;
mod landlock;
mod mounts;
mod spec;
mod sys;

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub(crate) use spec::Spec;
pub use spec::{NetworkMode, HELPER_MODE_ARG};

/// The file name of the helper on its own (`src/bin/rdev-sandbox.rs`): the same code as the
/// server's `__sandbox` mode in a 0.5 MB binary instead of a 40 MB one, which a command starts
/// about a millisecond sooner (fewer pages to map and relocate at `exec`, and to copy at the
/// helper's `clone`).
pub const HELPER_BINARY: &str = "rdev-sandbox";

/// The [`HELPER_BINARY`] in the same directory as `server` (the server's executable), when it
/// is there as an executable regular file.
pub fn sibling_helper(server: &Path) -> Option<PathBuf> {
    let helper = server.parent()?.join(HELPER_BINARY);
    let meta = std::fs::metadata(&helper).ok()?;
    (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(helper)
}

/// The uid and gid commands run as by default: distroless's "nonroot", unused on most hosts,
/// and the same as project pods run as.
pub const DEFAULT_COMMAND_ID: u32 = 65532;

/// How the process executor confines commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sandbox {
    /// Commands run unconfined, as the server's own user (`PROCESS_SANDBOX=off`).
    Off,
    /// Commands run in the sandbox.
    On(SandboxConfig),
}

/// The sandbox's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// The binary that implements [`HELPER_MODE_ARG`]: [`HELPER_BINARY`] or the server itself.
    pub helper: PathBuf,
    /// The uid commands run as (never 0).
    pub uid: u32,
    /// The gid commands run as (never 0).
    pub gid: u32,
    /// Host network or an empty one.
    pub network: NetworkMode,
    /// Server paths (database, key files, data directory) to hide should a mounted system
    /// directory contain them.
    pub hidden: Vec<PathBuf>,
}

impl SandboxConfig {
    /// A sandbox started by `helper`, with the default ids, the host network and nothing extra
    /// to hide.
    pub fn new(helper: PathBuf) -> Self {
        Self {
            helper,
            uid: DEFAULT_COMMAND_ID,
            gid: DEFAULT_COMMAND_ID,
            network: NetworkMode::Host,
            hidden: Vec::new(),
        }
    }
}

/// How a sandboxed command ended, as the helper passes it on (`Spec::ended_fd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// It exited with this code.
    Exited(i32),
    /// It died of this signal.
    Signaled(i32),
}

/// Reads the two bytes the helper writes on `Spec::ended_fd`.
pub(crate) fn decode_end(bytes: [u8; 2]) -> Option<End> {
    match bytes {
        [helper::ENDED_EXIT, code] => Some(End::Exited(i32::from(code))),
        [helper::ENDED_SIGNAL, signal] => Some(End::Signaled(i32::from(signal))),
        _ => None,
    }
}

/// The helper's entry point: `args` are the arguments after [`HELPER_MODE_ARG`]. Call it first
/// thing in `main`, before any thread exists: the helper forks and enters namespaces, which a
/// multi-threaded process cannot do safely (and `unshare(CLONE_NEWUSER)` refuses outright).
pub fn helper_main(args: impl IntoIterator<Item = OsString>) -> ! {
    let code = match Spec::parse(args) {
        Ok(spec) => helper::run(&spec),
        Err(e) => {
            eprintln!("rdev-api sandbox: {e}");
            helper::SETUP_FAILED
        }
    };
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sibling_helper_is_found_only_when_executable() {
        let dir = tempfile::tempdir().expect("dir");
        let server = dir.path().join("rdev-api");
        assert_eq!(sibling_helper(&server), None);
        let helper = dir.path().join(HELPER_BINARY);
        std::fs::write(&helper, b"#!/bin/true\n").expect("write");
        assert_eq!(sibling_helper(&server), None, "not executable");
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(sibling_helper(&server), Some(helper));
        std::fs::remove_file(dir.path().join(HELPER_BINARY)).expect("rm");
        std::fs::create_dir(dir.path().join(HELPER_BINARY)).expect("mkdir");
        assert_eq!(sibling_helper(&server), None, "a directory");
    }
}
