//! Project workspaces on disk: `<root>/<project>`, private to the server and to the commands
//! of that project.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use domain::project::ProjectName;

/// Where workspaces live and who owns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Workspaces {
    root: PathBuf,
    /// The uid and gid to hand each workspace to, when the server runs as root and commands
    /// run as another user.
    owner: Option<(u32, u32)>,
}

impl Workspaces {
    /// Workspaces under `root`, handed to `owner` when set.
    pub(crate) fn new(root: PathBuf, owner: Option<(u32, u32)>) -> Self {
        Self { root, owner }
    }

    /// The parent of every workspace.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// The workspace directory of `project` (which may not exist yet).
    pub(crate) fn dir(&self, project: &ProjectName) -> PathBuf {
        // A `ProjectName` is `^[a-z][a-z0-9-]*$`, so it is always one safe path component.
        self.root.join(project.as_str())
    }

    /// Creates the root (0700) and the project's workspace (0700, owned by the command user).
    pub(crate) fn prepare(&self, project: &ProjectName) -> io::Result<PathBuf> {
        let dir = self.dir(project);
        self.prepare_dir(&dir)?;
        Ok(dir)
    }

    /// Creates `dir` under the root as a workspace: private, owned by the command user.
    pub(crate) fn prepare_dir(&self, dir: &Path) -> io::Result<()> {
        create_private_dir(&self.root)?;
        create_private_dir(dir)?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
        }
        Ok(())
    }
}

/// Creates `dir` (and its parents) with mode 0700; an existing `dir` is made 0700 too, so a
/// tree created by an older version is not left world-readable.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mut permissions = std::fs::metadata(dir)?.permissions();
    if permissions.mode() & 0o777 != 0o700 {
        permissions.set_mode(0o700);
        std::fs::set_permissions(dir, permissions)?;
    }
    Ok(())
}
