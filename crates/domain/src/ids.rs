//! Newtype ids: UUID v7 strings on the wire, never interchangeable in code.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::DomainError;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps an existing UUID.
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            /// A fresh, time-ordered (v7) id.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            /// The underlying UUID.
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = DomainError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|_| DomainError::invalid("id", concat!($what, " id must be a UUID")))
            }
        }
    };
}

// Other modules of the crate declare their ids with it too (the webhook ids).
pub(crate) use id_type;

id_type!(
    /// Identifies a project.
    ProjectId,
    "project"
);
id_type!(
    /// Identifies an API key (never the secret).
    ApiKeyId,
    "API key"
);
id_type!(
    /// Identifies a command.
    CommandId,
    "command"
);
id_type!(
    /// Identifies an audit record.
    AuditId,
    "audit record"
);

/// Identifies one queue worker (one per replica) in leases and heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WorkerId(String);

impl WorkerId {
    /// Wraps a worker name (hostname plus a random suffix, typically).
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The name as stored in leases.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
