//! The sandbox every command of the process executor runs in, so that a command sees what it
//! would see in its pod and nothing of the server: its own user, PID, mount, IPC and UTS
//! namespaces (and, with `PROCESS_NETWORK=none`, network), the project's workspace at the
//! project's workdir, the host's system directories read-only, never the server's identity,
//! `no_new_privs`, no capabilities, and Landlock where the kernel offers it.
//!
//! The sandbox is set up by a helper process: the server's own binary started in a hidden
//! mode ([`HELPER_MODE_ARG`]), like Codex's `codex-linux-sandbox`, so no system package is
//! needed. It must start single-threaded, before any runtime: see [`helper_main`].

mod helper;
mod init;
mod landlock;
mod mounts;
mod spec;
mod sys;

use std::ffi::OsString;
use std::path::PathBuf;

pub(crate) use spec::Spec;
pub use spec::{NetworkMode, HELPER_MODE_ARG};

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
    /// The binary that implements [`HELPER_MODE_ARG`] (the server's own executable).
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
