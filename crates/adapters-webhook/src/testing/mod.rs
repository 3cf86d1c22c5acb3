//! Test support (feature `testing`): a scriptable receiver on loopback, and the independent
//! Python verifier of Standard Webhooks signatures.

mod python;
mod receiver;

pub use python::{verify_with_python, PythonVerifier, PACKAGE as PYTHON_PACKAGE, SKIP_ENV as SKIP_PYTHON_ENV};
pub use receiver::{Received, Receiver, Reply};
