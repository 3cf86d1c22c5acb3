//! What the server tells the sandbox helper about one command, as command-line arguments.
//!
//! The helper is a fresh process (the same binary, a hidden mode), so everything it needs
//! travels in argv: paths as raw bytes (`OsString`), numbers as decimal text. The command's
//! environment is the helper's own environment, which the server sets up exactly.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

/// The first argument that puts the binary in sandbox-helper mode.
pub const HELPER_MODE_ARG: &str = "__sandbox";

/// Whether a command gets the host's network or an empty network namespace of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// The host's network (dev environments install packages).
    #[default]
    Host,
    /// A network namespace with only a loopback interface.
    None,
}

impl NetworkMode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::None => "none",
        }
    }
}

impl std::str::FromStr for NetworkMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "host" => Ok(Self::Host),
            "none" => Ok(Self::None),
            other => Err(format!("network must be host or none, not {other:?}")),
        }
    }
}

/// One sandboxed command, as the helper receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spec {
    /// The project's workspace on the host (absolute).
    pub workspace: PathBuf,
    /// Where the workspace appears inside the sandbox (absolute): the project's workdir.
    pub workdir: PathBuf,
    /// The working directory inside the sandbox (absolute).
    pub cwd: PathBuf,
    /// The uid the command runs as.
    pub uid: u32,
    /// The gid the command runs as.
    pub gid: u32,
    /// Host network or none.
    pub network: NetworkMode,
    /// The sandbox's host name (the local pod's name).
    pub hostname: String,
    /// Host paths that must not be visible even where a system directory is mounted.
    pub hidden: Vec<PathBuf>,
    /// The descriptor on which the helper reports why the command could not start.
    pub report_fd: i32,
    /// The descriptor on which the helper tells the server how the command ended, as soon as
    /// every process of it is gone: before the namespaces are torn down, which takes the kernel
    /// milliseconds (an RCU grace period for the mount namespace).
    pub ended_fd: i32,
    /// The server's pid: the helper dies with it, and exits at once if it is already gone.
    pub server_pid: i32,
    /// Program and arguments.
    pub argv: Vec<OsString>,
}

impl Spec {
    /// The helper's arguments after [`HELPER_MODE_ARG`].
    pub(crate) fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::with_capacity(20 + self.argv.len());
        let mut flag = |name: &str, value: OsString| {
            args.push(OsString::from(name));
            args.push(value);
        };
        flag("--workspace", self.workspace.clone().into_os_string());
        flag("--workdir", self.workdir.clone().into_os_string());
        flag("--cwd", self.cwd.clone().into_os_string());
        flag("--uid", self.uid.to_string().into());
        flag("--gid", self.gid.to_string().into());
        flag("--network", self.network.as_str().into());
        flag("--hostname", self.hostname.clone().into());
        flag("--report-fd", self.report_fd.to_string().into());
        flag("--ended-fd", self.ended_fd.to_string().into());
        flag("--server-pid", self.server_pid.to_string().into());
        for hidden in &self.hidden {
            flag("--hide", hidden.clone().into_os_string());
        }
        args.push("--".into());
        args.extend(self.argv.iter().cloned());
        args
    }

    /// Parses [`Spec::to_args`]'s output.
    pub(crate) fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Spec, String> {
        let mut args = args.into_iter();
        let mut spec = Spec {
            workspace: PathBuf::new(),
            workdir: PathBuf::new(),
            cwd: PathBuf::new(),
            uid: 0,
            gid: 0,
            network: NetworkMode::Host,
            hostname: String::new(),
            hidden: Vec::new(),
            report_fd: -1,
            ended_fd: -1,
            server_pid: 0,
            argv: Vec::new(),
        };
        while let Some(name) = args.next() {
            if name == "--" {
                spec.argv = args.collect();
                return spec.checked();
            }
            let value = args.next().ok_or_else(|| format!("{} needs a value", name.to_string_lossy()))?;
            match name.to_str() {
                Some("--workspace") => spec.workspace = value.into(),
                Some("--workdir") => spec.workdir = value.into(),
                Some("--cwd") => spec.cwd = value.into(),
                Some("--uid") => spec.uid = number(&name, &value)?,
                Some("--gid") => spec.gid = number(&name, &value)?,
                Some("--network") => spec.network = text(&name, &value)?.parse()?,
                Some("--hostname") => spec.hostname = text(&name, &value)?.to_owned(),
                Some("--report-fd") => spec.report_fd = number(&name, &value)?,
                Some("--ended-fd") => spec.ended_fd = number(&name, &value)?,
                Some("--server-pid") => spec.server_pid = number(&name, &value)?,
                Some("--hide") => spec.hidden.push(value.into()),
                _ => return Err(format!("unknown argument {}", name.to_string_lossy())),
            }
        }
        Err("missing -- before the command".to_owned())
    }

    fn checked(self) -> Result<Spec, String> {
        for (name, path) in [("--workspace", &self.workspace), ("--workdir", &self.workdir), ("--cwd", &self.cwd)] {
            if !path.is_absolute() {
                return Err(format!("{name} must be an absolute path"));
            }
        }
        if self.workdir.parent().is_none() {
            return Err("--workdir cannot be /".to_owned());
        }
        if self.uid == 0 || self.gid == 0 {
            return Err("commands never run as uid or gid 0".to_owned());
        }
        if self.report_fd < 3 || self.ended_fd < 3 || self.report_fd == self.ended_fd {
            return Err("--report-fd and --ended-fd must be two descriptors, 3 or above".to_owned());
        }
        if self.argv.is_empty() {
            return Err("the command is empty".to_owned());
        }
        Ok(self)
    }
}

fn text<'a>(name: &OsStr, value: &'a OsStr) -> Result<&'a str, String> {
    value.to_str().ok_or_else(|| format!("{} is not UTF-8", name.to_string_lossy()))
}

fn number<T: std::str::FromStr>(name: &OsStr, value: &OsStr) -> Result<T, String> {
    text(name, value)?.parse().map_err(|_| format!("{} must be a number", name.to_string_lossy()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            workspace: "/data/workspaces/p".into(),
            workdir: "/workspace".into(),
            cwd: "/workspace/src".into(),
            uid: 65532,
            gid: 65533,
            network: NetworkMode::None,
            hostname: "local-p".into(),
            hidden: vec!["/data".into(), "/etc/rdev/key".into()],
            report_fd: 3,
            ended_fd: 4,
            server_pid: 42,
            argv: vec!["sh".into(), "-c".into(), "echo --; ls".into()],
        }
    }

    #[test]
    fn arguments_round_trip() {
        let spec = spec();
        assert_eq!(Spec::parse(spec.to_args()), Ok(spec));
    }

    #[test]
    fn root_ids_and_relative_paths_are_refused() {
        let root = Spec { uid: 0, ..spec() };
        assert!(Spec::parse(root.to_args()).is_err());
        let relative = Spec { cwd: "src".into(), ..spec() };
        assert!(Spec::parse(relative.to_args()).is_err());
        let top = Spec { workdir: "/".into(), ..spec() };
        assert!(Spec::parse(top.to_args()).is_err());
        let shared = Spec { ended_fd: 3, ..spec() };
        assert!(Spec::parse(shared.to_args()).is_err(), "one descriptor for both pipes");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for args in [vec!["--uid"], vec!["--uid", "x", "--"], vec!["--what", "1", "--"], vec!["--cwd", "/a"]] {
            let parsed = Spec::parse(args.into_iter().map(OsString::from));
            assert!(parsed.is_err());
        }
    }
}
