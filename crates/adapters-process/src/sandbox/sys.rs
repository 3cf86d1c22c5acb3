//! The few system calls the sandbox needs that have no safe wrapper: creating a process in new
//! namespaces, forking, the file-descriptor and mount-attribute calls, Landlock and the
//! loopback interface. Every `unsafe` block of the crate is here, each with its reason.
#![allow(unsafe_code, reason = "raw system calls without safe wrappers; each block says why it is sound")]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::{ForkResult, Pid};

/// Stack for the namespace child until it forks the command; it only sets up mounts.
const CLONE_STACK_BYTES: usize = 1024 * 1024;

/// Starts `child` as a new process in the namespaces of `flags`; it exits with its return value.
///
/// Only called from the single-threaded helper, where a copy of the address space (no
/// `CLONE_VM`) is as safe as `fork`: no other thread can hold a lock the child would need.
pub(crate) fn clone_process(flags: CloneFlags, child: impl FnMut() -> isize) -> nix::Result<Pid> {
    let mut stack = vec![0u8; CLONE_STACK_BYTES];
    // SAFETY: the helper is single-threaded (see above), the stack outlives the call in the
    // parent and is the child's own copy in the child, and SIGCHLD makes it waitable.
    unsafe { nix::sched::clone(Box::new(child), &mut stack, flags, Some(Signal::SIGCHLD as i32)) }
}

/// `fork()` from a single-threaded process (the sandbox's init).
pub(crate) fn fork_single_threaded() -> nix::Result<ForkResult> {
    // SAFETY: only called by the sandbox's init process, which never starts threads.
    unsafe { nix::unistd::fork() }
}

/// Closes every descriptor but the standard three and those in `keep`, so nothing the server
/// opened (or another command's pipe, inherited in a race) reaches the command.
pub(crate) fn close_descriptors_except(keep: &[RawFd]) -> io::Result<()> {
    let mut keep = keep
        .iter()
        .map(|fd| u32::try_from(*fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput)))
        .collect::<io::Result<Vec<u32>>>()?;
    keep.sort_unstable();
    let mut first = 3;
    for fd in keep {
        if fd > first {
            close_range(first, fd - 1)?;
        }
        first = first.max(fd + 1);
    }
    close_range(first, u32::MAX)
}

fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: close_range only closes descriptors; nothing in this process uses those in range.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Takes ownership of an inherited descriptor number.
pub(crate) fn adopt_descriptor(fd: RawFd) -> io::Result<OwnedFd> {
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).map_err(io::Error::from)?;
    // SAFETY: the descriptor is open (checked above) and nothing else in this process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A signal handler that does nothing: the sandbox's init takes signals with `sigwait`, but
/// PID 1 of a namespace only receives signals it has a handler for.
extern "C" fn ignore_signal(_: libc::c_int) {}

/// Installs the do-nothing handler for `signal`.
pub(crate) fn catch_signal(signal: Signal) -> nix::Result<()> {
    let action = SigAction::new(SigHandler::Handler(ignore_signal), SaFlags::SA_RESTART, SigSet::empty());
    // SAFETY: the handler is async-signal-safe (it does nothing).
    unsafe { sigaction(signal, &action) }.map(drop)
}

/// Restores the default action of `signal`.
pub(crate) fn default_signal(signal: Signal) -> nix::Result<()> {
    let action = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: the default action involves no handler code.
    unsafe { sigaction(signal, &action) }.map(drop)
}

/// Drops `capability` from the bounding set; `false` once past the kernel's last capability.
pub(crate) fn drop_bounding_capability(capability: libc::c_ulong) -> bool {
    // SAFETY: PR_CAPBSET_DROP takes a capability number and touches no memory.
    unsafe { libc::prctl(libc::PR_CAPBSET_DROP, capability, 0, 0, 0) == 0 }
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV`.
const READ_ONLY_ATTRS: u64 = 0x1 | 0x2 | 0x4;

/// Makes the mount at `path`, and with `recursive` every mount below it, read-only, nosuid and
/// nodev. Unlike a `MS_REMOUNT`, this keeps the flags a user namespace may not clear.
pub(crate) fn make_read_only(path: &Path, recursive: bool) -> io::Result<()> {
    let path = c_path(path)?;
    let attr = MountAttr { attr_set: READ_ONLY_ATTRS, attr_clr: 0, propagation: 0, userns_fd: 0 };
    let flags: libc::c_uint = if recursive { libc::AT_RECURSIVE as libc::c_uint } else { 0 };
    // SAFETY: `path` is a valid C string and `attr` a valid mount_attr of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `struct landlock_ruleset_attr` (ABI 1–3 fields; later ones default to "not handled").
#[repr(C)]
struct LandlockRulesetAttr {
    handled_access_fs: u64,
}

/// `struct landlock_path_beneath_attr` (packed in the kernel's ABI).
#[repr(C, packed)]
struct LandlockPathBeneath {
    allowed_access: u64,
    parent_fd: i32,
}

/// The Landlock ABI version the kernel offers, or `None` without Landlock.
pub(crate) fn landlock_abi() -> Option<u32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: a NULL attribute with size 0 and the VERSION flag only asks for the ABI number.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(rc).ok().filter(|v| *v > 0)
}

/// A new Landlock ruleset that handles `handled` file-system accesses.
pub(crate) fn landlock_ruleset(handled: u64) -> io::Result<OwnedFd> {
    let attr = LandlockRulesetAttr { handled_access_fs: handled };
    // SAFETY: `attr` is a valid ruleset attribute of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const LandlockRulesetAttr,
            std::mem::size_of::<LandlockRulesetAttr>(),
            0u32,
        )
    };
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::last_os_error())?;
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Allows `access` beneath the directory open as `parent`.
pub(crate) fn landlock_allow(ruleset: &OwnedFd, parent: &OwnedFd, access: u64) -> io::Result<()> {
    const LANDLOCK_RULE_PATH_BENEATH: libc::c_uint = 1;
    let rule = LandlockPathBeneath { allowed_access: access, parent_fd: parent.as_raw_fd() };
    // SAFETY: both descriptors are open and `rule` is a valid path-beneath attribute.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            LANDLOCK_RULE_PATH_BENEATH,
            &rule as *const LandlockPathBeneath,
            0u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Confines this process (and everything it starts) to `ruleset`.
pub(crate) fn landlock_restrict_self(ruleset: &OwnedFd) -> io::Result<()> {
    // SAFETY: the descriptor is an open ruleset; the call changes only this thread's domain.
    let rc = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0u32) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Brings the loopback interface of this network namespace up, as a pod's is.
pub(crate) fn loopback_up() -> io::Result<()> {
    let socket = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the flags of the named interface into `request`.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the flags member of the union was just written by the kernel.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the name and flags from `request`.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `errno` as the error it is.
pub(crate) fn errno_error(errno: Errno) -> io::Error {
    io::Error::from_raw_os_error(errno as i32)
}
