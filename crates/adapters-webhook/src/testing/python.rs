//! The independent verifier: the Standard Webhooks reference library for Python (PyPI
//! `standardwebhooks`), installed into a virtualenv under the test's target directory.
//!
//! A machine without `python3`, `venv` or access to PyPI cannot run this check. Rather than skip
//! silently, the check then fails with a message saying what is missing; CI machines that
//! cannot have Python opt out explicitly with `RDEV_SKIP_PYTHON_VERIFIER=1` (the test prints
//! that it was skipped, and why).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use super::receiver::Received;

/// The pinned reference library.
pub const PACKAGE: &str = "standardwebhooks==1.1.0";
/// Set to `1` to skip the Python check where Python cannot be had.
pub const SKIP_ENV: &str = "RDEV_SKIP_PYTHON_VERIFIER";

const SCRIPT: &str = include_str!("verify_standardwebhooks.py");

/// Only one test at a time creates the virtualenv.
static SETUP: Mutex<()> = Mutex::new(());

/// What the Python check did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PythonVerifier {
    /// The reference library verified every signature; its output.
    Verified(String),
    /// Skipped on request (`RDEV_SKIP_PYTHON_VERIFIER=1`).
    Skipped,
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A virtualenv with the reference library under `dir`, made on first use.
fn python(dir: &Path) -> Result<PathBuf, String> {
    let _once = SETUP.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let venv = dir.join("py-standardwebhooks");
    let python = venv.join("bin").join("python");
    let ready = python.exists()
        && run(Command::new(&python).args(["-c", "import standardwebhooks"]), "importing standardwebhooks").is_ok();
    if !ready {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv), "creating a Python virtualenv (python3 -m venv)")?;
        run(
            Command::new(&python).args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", PACKAGE]),
            &format!("installing {PACKAGE} from PyPI with pip"),
        )?;
    }
    Ok(python)
}

/// Verifies the signature of `received` with each of `secrets`, and checks that `wrong_secret`
/// does not verify, with the Python reference library; the virtualenv lives under `dir`.
///
/// # Errors
/// A message saying what failed: Python, venv or pip missing, PyPI unreachable, or the
/// signature refused (with the library's reason).
pub fn verify_with_python(
    dir: &Path,
    received: &Received,
    secrets: &[&str],
    wrong_secret: &str,
) -> Result<PythonVerifier, String> {
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        return Ok(PythonVerifier::Skipped);
    }
    let python = python(dir).map_err(|e| {
        format!("the independent Python verifier is unavailable: {e}. Install python3 with venv and pip and allow PyPI, or set {SKIP_ENV}=1 to skip this check explicitly")
    })?;
    let request = serde_json::json!({
        "payload": received.body,
        "headers": received.headers,
        "secrets": secrets,
        "wrong_secret": wrong_secret,
    });
    let mut child = Command::new(&python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run the Python verifier: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(request.to_string().as_bytes()).map_err(|e| format!("writing to the verifier: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("waiting for the verifier: {e}"))?;
    if out.status.success() {
        Ok(PythonVerifier::Verified(String::from_utf8_lossy(&out.stdout).trim().to_owned()))
    } else {
        Err(format!(
            "the Python reference library refused the signature: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
