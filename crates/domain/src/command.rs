//! Commands: what to run, how urgently, and the state machine of a run.
//!
//! `values` holds the validated settings (timeout, env, priority, idempotency), `spec` what runs
//! and with which cwd and stdin, `state` the status machine and how a run ends, `model` the
//! entity. Everything is re-exported here, so `domain::command::X` is the one path to use.

mod model;
mod spec;
mod state;
mod values;

pub use model::{Command, NewCommand};
pub use spec::{validate_cwd, CommandSpec, CommandStdin, WorkingDir, MAX_CWD_CHARS, MAX_STDIN_BYTES};
pub use state::{
    CommandStatus, Completion, Termination, TerminationReason, ABSENT_OWNER_LOST, LEASE_EXPIRED_LOST, REPLICA_SHUT_DOWN,
};
pub use values::{dequeue_order, EnvMap, Idempotency, Priority, TimeoutSeconds};
