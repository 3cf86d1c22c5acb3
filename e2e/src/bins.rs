//! Where the binaries under test are: beside this test binary's `deps/` directory (the same
//! target directory and profile), or in `E2E_BIN_DIR`.

use std::path::{Path, PathBuf};

/// What builds them (`make e2e` runs it first).
pub const BUILD_COMMAND: &str = "cargo build -p app --bin rdev-api -p kube-sim --bin kube-sim";

/// The path of binary `name`.
///
/// # Panics
/// When it is not there: the message says how to build it.
pub fn binary(name: &str) -> PathBuf {
    let dir = bin_dir();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first with `{BUILD_COMMAND}` (`make e2e` does), or set E2E_BIN_DIR to the directory holding it",
        path.display()
    );
    path
}

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("E2E_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<this test> → target/<profile>
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent().and_then(Path::parent).map(Path::to_path_buf).expect("the test binary lives in target/<profile>/deps")
}
