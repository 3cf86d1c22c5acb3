//! Projects: a name, the image and workdir of their pod, and their limits.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::command::{EnvMap, TimeoutSeconds};
use crate::ids::ProjectId;
use crate::{DomainError, DomainResult, FieldError, Timestamp};

/// A project name: `^[a-z][a-z0-9-]{0,61}[a-z0-9]$`, usable as a DNS label and a pod name part.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProjectName(String);

impl ProjectName {
    /// Longest allowed name (a DNS label).
    pub const MAX_LEN: usize = 63;
    /// The grammar `parse` enforces, as an ECMA-262 regular expression (for the API document).
    pub const PATTERN: &'static str = "^[a-z][a-z0-9-]{0,61}[a-z0-9]$";

    /// Parses a project name, explaining what is wrong when it is not one.
    pub fn parse(s: &str) -> DomainResult<Self> {
        let bytes = s.as_bytes();
        let message = if bytes.len() < 2 || bytes.len() > Self::MAX_LEN {
            Some("must be 2 to 63 characters long")
        } else if !bytes[0].is_ascii_lowercase() {
            Some("must start with a lowercase letter")
        } else if !bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-') {
            Some("may contain only lowercase letters, digits and '-'")
        } else if bytes[bytes.len() - 1] == b'-' {
            Some("must not end with '-'")
        } else {
            None
        };
        match message {
            Some(m) => Err(DomainError::invalid("name", m)),
            None => Ok(Self(s.to_owned())),
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ProjectName {
    type Error = DomainError;
    fn try_from(s: String) -> DomainResult<Self> {
        Self::parse(&s)
    }
}

impl From<ProjectName> for String {
    fn from(n: ProjectName) -> Self {
        n.0
    }
}

/// CPU and memory of a project's pod, in Kubernetes quantity syntax (`500m`, `1Gi`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU request and limit, e.g. `500m` or `2`.
    pub cpu: Option<String>,
    /// Memory request and limit, e.g. `512Mi`.
    pub memory: Option<String>,
}

impl Resources {
    /// Checks both quantities with the Kubernetes quantity grammar (number plus optional suffix).
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        for (field, value) in [("resources.cpu", &self.cpu), ("resources.memory", &self.memory)] {
            if let Some(v) = value {
                if !is_quantity(v) {
                    errors.push(FieldError::new(field, "must be a Kubernetes quantity such as 500m, 2, 512Mi or 1Gi"));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// The Kubernetes quantity grammar `is_quantity` accepts, as an ECMA-262 regular expression.
pub const QUANTITY_PATTERN: &str = "^(?:[0-9]+(?:\\.[0-9]*)?|\\.[0-9]+)(?:m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$";

/// Longest quantity.
pub const MAX_QUANTITY_LEN: usize = 32;

fn is_quantity(s: &str) -> bool {
    const SUFFIXES: [&str; 14] = ["", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let digits_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    !number.is_empty()
        && number.chars().filter(|c| *c == '.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit())
        && s.len() <= MAX_QUANTITY_LEN
        && SUFFIXES.contains(&suffix)
}

/// A project and the settings of its development pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    /// Stable id.
    pub id: ProjectId,
    /// Unique name, used in URLs.
    pub name: ProjectName,
    /// Container image of the project's pod.
    pub image: String,
    /// Working directory commands start in (absolute).
    pub workdir: String,
    /// Environment every command of the project gets (a command's own env wins).
    pub env: EnvMap,
    /// Pod resources.
    pub resources: Resources,
    /// At most this many of the project's commands run at once, over all replicas.
    pub max_concurrent_commands: u32,
    /// Timeout of commands that do not set one.
    pub default_timeout_seconds: TimeoutSeconds,
    /// At most this many of the project's commands wait in the queue; `None`: the server's
    /// `MAX_QUEUED_COMMANDS`.
    pub max_queued_commands: Option<u32>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

/// Validated settings of a project (create, or the result of applying a patch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectSettings {
    /// Container image.
    pub image: String,
    /// Absolute working directory.
    pub workdir: String,
    /// Project-wide environment.
    pub env: EnvMap,
    /// Pod resources.
    pub resources: Resources,
    /// Per-project concurrency cap, 1..=MAX_PROJECT_CONCURRENCY.
    pub max_concurrent_commands: u32,
    /// Default command timeout.
    pub default_timeout_seconds: TimeoutSeconds,
    /// Queue cap, 1..=MAX_QUEUED_LIMIT; `None`: the server default.
    pub max_queued_commands: Option<u32>,
}

/// Longest image reference.
pub const MAX_IMAGE_LEN: usize = 512;

/// Longest workdir.
pub const MAX_WORKDIR_CHARS: usize = 1024;

/// Highest `max_concurrent_commands` a project may ask for.
pub const MAX_PROJECT_CONCURRENCY: u32 = 1000;

/// Highest `max_queued_commands` a project (or the server default) may ask for: queued
/// commands carry their stdin (up to 1 MiB each), so the cap is what bounds the store.
pub const MAX_QUEUED_LIMIT: u32 = 100_000;

impl ProjectSettings {
    /// Validates the fields that have no type of their own (image, workdir, cap, resources).
    pub fn validate(&self) -> DomainResult<()> {
        let mut errors = Vec::new();
        // Image references are printable ASCII: no spaces, no controls.
        if self.image.is_empty()
            || self.image.len() > MAX_IMAGE_LEN
            || !self.image.bytes().all(|b| b.is_ascii_graphic())
        {
            errors.push(FieldError::new(
                "image",
                "must be a container image reference of printable ASCII without spaces, at most 512 characters",
            ));
        }
        if !self.workdir.starts_with('/')
            || self.workdir.chars().count() > MAX_WORKDIR_CHARS
            || self.workdir.contains('\0')
        {
            errors.push(FieldError::new("workdir", "must be an absolute path of at most 1024 characters"));
        }
        if !(1..=MAX_PROJECT_CONCURRENCY).contains(&self.max_concurrent_commands) {
            errors.push(FieldError::new(
                "max_concurrent_commands",
                format!("must be between 1 and {MAX_PROJECT_CONCURRENCY}"),
            ));
        }
        if self.max_queued_commands.is_some_and(|n| !(1..=MAX_QUEUED_LIMIT).contains(&n)) {
            errors.push(FieldError::new("max_queued_commands", format!("must be between 1 and {MAX_QUEUED_LIMIT}")));
        }
        if let Err(mut e) = self.resources.validate() {
            errors.append(&mut e);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(DomainError::Invalid(errors))
        }
    }
}

/// A change to a project; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectPatch {
    /// New image.
    pub image: Option<String>,
    /// New workdir.
    pub workdir: Option<String>,
    /// New environment (replaces the old one).
    pub env: Option<EnvMap>,
    /// New resources (replaces the old ones).
    pub resources: Option<Resources>,
    /// New concurrency cap.
    pub max_concurrent_commands: Option<u32>,
    /// New default timeout.
    pub default_timeout_seconds: Option<TimeoutSeconds>,
    /// New queue cap.
    pub max_queued_commands: Option<u32>,
}

impl Project {
    /// The project's current settings.
    pub fn settings(&self) -> ProjectSettings {
        ProjectSettings {
            image: self.image.clone(),
            workdir: self.workdir.clone(),
            env: self.env.clone(),
            resources: self.resources.clone(),
            max_concurrent_commands: self.max_concurrent_commands,
            default_timeout_seconds: self.default_timeout_seconds,
            max_queued_commands: self.max_queued_commands,
        }
    }

    /// Applies a patch and validates the result; the project is unchanged on error.
    pub fn apply(&self, patch: ProjectPatch, now: Timestamp) -> DomainResult<Project> {
        let current = self.settings();
        let settings = ProjectSettings {
            image: patch.image.unwrap_or(current.image),
            workdir: patch.workdir.unwrap_or(current.workdir),
            env: patch.env.unwrap_or(current.env),
            resources: patch.resources.unwrap_or(current.resources),
            max_concurrent_commands: patch.max_concurrent_commands.unwrap_or(current.max_concurrent_commands),
            default_timeout_seconds: patch.default_timeout_seconds.unwrap_or(current.default_timeout_seconds),
            max_queued_commands: patch.max_queued_commands.or(current.max_queued_commands),
        };
        settings.validate()?;
        Ok(Project::from_settings(self.id, self.name.clone(), settings, self.created_at, now))
    }

    /// Builds a project from validated settings.
    pub fn from_settings(
        id: ProjectId,
        name: ProjectName,
        s: ProjectSettings,
        created_at: Timestamp,
        updated_at: Timestamp,
    ) -> Project {
        Project {
            id,
            name,
            image: s.image,
            workdir: s.workdir,
            env: s.env,
            resources: s.resources,
            max_concurrent_commands: s.max_concurrent_commands,
            default_timeout_seconds: s.default_timeout_seconds,
            max_queued_commands: s.max_queued_commands,
            created_at,
            updated_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_dns_label_names() {
        for ok in ["ab", "web-app", "a1", "x".repeat(63).as_str()] {
            assert!(ProjectName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_names_outside_the_pattern() {
        for bad in ["", "a", "1ab", "Ab", "ab-", "a_b", "a b", "x".repeat(64).as_str(), "ä-b"] {
            assert!(ProjectName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn quantities_follow_kubernetes_syntax() {
        for ok in ["500m", "2", "0.5", "512Mi", "1Gi", "1G"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "1.2.3", "12 Gi", "1gb", "-1"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn parsed_names_always_match_the_regex(s in "\\PC{0,70}") {
            if let Ok(name) = ProjectName::parse(&s) {
                let b = name.as_str().as_bytes();
                prop_assert!(b.len() >= 2 && b.len() <= 63);
                prop_assert!(b[0].is_ascii_lowercase());
                prop_assert!(b[b.len()-1].is_ascii_lowercase() || b[b.len()-1].is_ascii_digit());
            }
        }

        #[test]
        fn names_from_the_regex_always_parse(s in "[a-z][a-z0-9-]{0,61}[a-z0-9]") {
            prop_assert!(ProjectName::parse(&s).is_ok());
        }
    }
}
