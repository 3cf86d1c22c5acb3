//! The command's view of the file system, built in its own mount namespace: the host's system
//! directories read-only, the project's workspace read-write at the project's workdir, private
//! `/tmp`, `/dev/shm` and `/proc`, a minimal `/dev`, and nothing else of the host.
//!
//! The new root is a tmpfs mounted over the host's `/tmp` (in this namespace only), assembled
//! from the host paths, which are still the root's; then one `pivot_root(".", ".")` makes it the
//! root and the host tree is detached. Bubblewrap pivots twice (through a scratch root, so the
//! host stays reachable under `/oldroot`); the host is reachable here without it, which saves a
//! tmpfs, a pivot and an unmount per command. Everything read-only is made so by one recursive
//! `mount_setattr` on the new root, before the writable mounts (`/tmp`, `/dev`, `/proc`, the
//! workspace) are stacked on it: one call instead of one per system directory and mask.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, pivot_root};

use super::spec::Spec;
use super::sys;

/// Host directories mounted read-only, when they exist (symlinks, as on merged-/usr systems,
/// are recreated as symlinks).
const SYSTEM_DIRS: [&str; 9] = ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "opt"];
/// Device nodes a program may expect.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
/// Files of `/etc` that hold secrets; hidden even though file permissions usually protect them.
const ETC_SECRETS: [&str; 6] =
    ["/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/ssl/private", "/etc/ssh"];

/// Where the new root is assembled: an existing host directory whose own contents the sandbox
/// never needs (the sandbox gets a private `/tmp`; the workspace is reached by descriptor).
const NEW_ROOT: &str = "/tmp";

/// Builds the sandbox's root and makes it the process's root.
pub(crate) fn build(spec: &Spec, workspace: &File) -> Result<(), String> {
    fn step(what: &str) -> impl Fn(io::Error) -> String + '_ {
        move |e| format!("sandbox: {what}: {e}")
    }
    enter_new_root().map_err(step("new root"))?;
    for dir in SYSTEM_DIRS {
        bind_system_dir(dir).map_err(step(&format!("mounting /{dir}")))?;
    }
    let root = new_root();
    for dir in ["tmp", "dev", "proc"] {
        std::fs::create_dir(root.join(dir)).map_err(step(&format!("creating /{dir}")))?;
    }
    // Made now, while the root is writable; a workdir under a later mount (`/tmp/…`) or inside
    // a system directory is made (or found missing) when the workspace is mounted.
    let _ = std::fs::create_dir_all(under(&root, &spec.workdir));
    for hidden in spec.hidden.iter().map(PathBuf::as_path).chain(ETC_SECRETS.iter().map(Path::new)) {
        mask(hidden).map_err(step(&format!("hiding {}", hidden.display())))?;
    }
    // The root, every system directory and every mask at once; what is mounted from here on
    // (private directories, the workspace) stays writable.
    sys::make_read_only(&root, true).map_err(step("read-only root"))?;
    private_dirs().map_err(step("private /tmp, /dev and /proc"))?;
    bind_workspace(spec, workspace)?;
    switch_root().map_err(step("switching to the new root"))
}

fn new_root() -> PathBuf {
    PathBuf::from(NEW_ROOT)
}

/// `root` + `path` (absolute), without `Path::join`'s "an absolute path replaces" rule.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn errno(e: nix::errno::Errno) -> io::Error {
    sys::errno_error(e)
}

fn mount_fs(fstype: &str, target: &Path, flags: MsFlags, data: &str) -> io::Result<()> {
    mount(Some(fstype), target, Some(fstype), flags, Some(data)).map_err(errno)
}

fn bind(source: &Path, target: &Path, flags: MsFlags) -> io::Result<()> {
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND | flags, None::<&str>).map_err(errno)
}

/// Makes every mount private (nothing propagates back to the host) and mounts the empty new
/// root.
fn enter_new_root() -> io::Result<()> {
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).map_err(errno)?;
    mount_fs("tmpfs", &new_root(), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, "mode=0755")
}

fn bind_system_dir(dir: &str) -> io::Result<()> {
    let source = Path::new("/").join(dir);
    let target = new_root().join(dir);
    let meta = match source.symlink_metadata() {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.file_type().is_symlink() {
        return std::os::unix::fs::symlink(std::fs::read_link(&source)?, &target);
    }
    if !meta.is_dir() {
        return Ok(());
    }
    std::fs::create_dir(&target)?;
    bind(&source, &target, MsFlags::MS_REC)
}

/// A private `/tmp`, a minimal `/dev` with a private `/dev/shm`, and the namespace's `/proc`,
/// on the directories `build` made for them.
fn private_dirs() -> io::Result<()> {
    let root = new_root();
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount_fs("tmpfs", &root.join("tmp"), hardened, "mode=1777")?;
    let dev = root.join("dev");
    mount_fs("tmpfs", &dev, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, "mode=0755")?;
    for device in DEVICES {
        let source = Path::new("/dev").join(device);
        if source.exists() {
            std::fs::File::create(dev.join(device))?;
            bind(&source, &dev.join(device), MsFlags::empty())?;
        }
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))?;
    }
    std::fs::create_dir(dev.join("shm"))?;
    mount_fs("tmpfs", &dev.join("shm"), hardened | MsFlags::MS_NOEXEC, "mode=1777")?;
    mount_fs("proc", &root.join("proc"), hardened | MsFlags::MS_NOEXEC, "")
}

/// The workspace at the project's workdir (made here when `build` could not make it: under
/// the private `/tmp`). A workdir inside a read-only system directory that lacks it cannot be
/// created, and the command fails to start saying so.
fn bind_workspace(spec: &Spec, workspace: &File) -> Result<(), String> {
    let target = under(&new_root(), &spec.workdir);
    std::fs::create_dir_all(&target).map_err(|e| {
        format!("sandbox: the project's workdir {} cannot be created in the sandbox: {e}", spec.workdir.display())
    })?;
    // Through the descriptor opened before init gave up the server's identity: the path to the
    // workspace crosses the server's private workspaces root.
    let source = PathBuf::from(format!("/proc/self/fd/{}", workspace.as_raw_fd()));
    bind(&source, &target, MsFlags::MS_NOSUID | MsFlags::MS_NODEV)
        .map_err(|e| format!("sandbox: cannot mount the workspace at {}: {e}", spec.workdir.display()))
}

/// Hides `path` (a host path) if the new root shows it: an empty read-only tmpfs over a
/// directory, /dev/null over anything else (made read-only with the root by `build`).
fn mask(path: &Path) -> io::Result<()> {
    let target = under(&new_root(), path);
    let meta = match target.symlink_metadata() {
        Ok(meta) => meta,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    if meta.is_dir() {
        let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        return mount_fs("tmpfs", &target, flags, "mode=0755,size=4k");
    }
    bind(Path::new("/dev/null"), &target, MsFlags::empty())
}

/// Makes the new root the root and detaches the host tree.
fn switch_root() -> io::Result<()> {
    chdir(NEW_ROOT).map_err(errno)?;
    // pivot_root(".", ".") stacks the old root on top of the new one; detaching "." then
    // removes the old root (the host tree, private since `enter_new_root`) and leaves the new
    // root as "/".
    pivot_root(".", ".").map_err(errno)?;
    umount2(".", MntFlags::MNT_DETACH).map_err(errno)?;
    chdir("/").map_err(errno)
}
