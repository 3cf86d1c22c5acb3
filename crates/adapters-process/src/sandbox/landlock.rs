//! Landlock, as defence in depth behind the mount namespace: the command may read and execute
//! anywhere it can see, but write only in its workspace, `/tmp`, `/dev/shm` and device files.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::spec::Spec;
use super::sys;

const EXECUTE: u64 = 1 << 0;
const WRITE_FILE: u64 = 1 << 1;
const READ_FILE: u64 = 1 << 2;
const READ_DIR: u64 = 1 << 3;
/// ABI 1's accesses: the thirteen bits from EXECUTE to MAKE_SYM.
const ABI1_ALL: u64 = (1 << 13) - 1;
/// Moving or linking a file to another directory (ABI 2). Unhandled, it is always refused.
const REFER: u64 = 1 << 13;
/// Truncating a file, `O_TRUNC` included (ABI 3).
const TRUNCATE: u64 = 1 << 14;

/// Confines the calling process where the kernel offers Landlock ABI 2 or later; does nothing
/// elsewhere (ABI 1 would refuse every rename across directories, which breaks ordinary tools).
pub(crate) fn restrict(spec: &Spec) -> io::Result<()> {
    let Some(abi) = sys::landlock_abi().filter(|abi| *abi >= 2) else { return Ok(()) };
    let all = ABI1_ALL | REFER | if abi >= 3 { TRUNCATE } else { 0 };
    let ruleset = sys::landlock_ruleset(all)?;
    sys::landlock_allow(&ruleset, &beneath(Path::new("/"))?, READ_FILE | READ_DIR | EXECUTE)?;
    for writable in [spec.workdir.as_path(), Path::new("/tmp"), Path::new("/dev/shm")] {
        sys::landlock_allow(&ruleset, &beneath(writable)?, all)?;
    }
    let devices = READ_FILE | WRITE_FILE | READ_DIR | (all & TRUNCATE);
    sys::landlock_allow(&ruleset, &beneath(Path::new("/dev"))?, devices)?;
    sys::landlock_restrict_self(&ruleset)
}

fn beneath(path: &Path) -> io::Result<OwnedFd> {
    let file = File::options().read(true).custom_flags(libc::O_PATH | libc::O_CLOEXEC).open(path)?;
    Ok(OwnedFd::from(file))
}
