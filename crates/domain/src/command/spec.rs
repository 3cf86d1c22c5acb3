//! What a command runs and with what: the argv or script, its working directory and its stdin,
//! each parsed once at the edge and trusted from then on.

use serde::{Deserialize, Serialize};

use crate::{DomainError, DomainResult};

/// What to run: an argv vector (no shell) or a shell script run by `sh -c`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandSpec {
    /// Program and arguments, executed directly.
    Argv(Vec<String>),
    /// Shell text for `sh -c`.
    Script(String),
}

impl CommandSpec {
    /// Most argv entries.
    pub const MAX_ARGS: usize = 4096;
    /// Largest argv total (bytes) or script (characters).
    pub const MAX_BYTES: usize = 256 * 1024;
    /// The characters a script needs one of besides: it must not be blank.
    pub const BLANK: [char; 6] = [' ', '\t', '\n', '\r', '\u{b}', '\u{c}'];

    /// Builds a spec from the request's `command` / `script` pair: exactly one must be given.
    pub fn parse(command: Option<Vec<String>>, script: Option<String>) -> DomainResult<Self> {
        match (command, script) {
            (Some(_), Some(_)) => Err(DomainError::invalid("command", "give either command or script, not both")),
            (None, None) => Err(DomainError::invalid("command", "one of command (argv array) or script is required")),
            (Some(argv), None) => Self::parse_argv(argv),
            (None, Some(script)) => Self::parse_script(script),
        }
    }

    fn parse_argv(argv: Vec<String>) -> DomainResult<Self> {
        let total: usize = argv.iter().map(String::len).sum();
        if argv.is_empty() || argv[0].is_empty() {
            Err(DomainError::invalid("command", "must be a non-empty array whose first element names a program"))
        } else if argv.len() > Self::MAX_ARGS || total > Self::MAX_BYTES {
            Err(DomainError::invalid("command", "at most 4096 arguments and 256 KiB in total"))
        } else if argv.iter().any(|a| a.contains('\0')) {
            Err(DomainError::invalid("command", "arguments must not contain NUL"))
        } else {
            Ok(Self::Argv(argv))
        }
    }

    fn parse_script(script: String) -> DomainResult<Self> {
        if script.chars().all(|c| Self::BLANK.contains(&c)) {
            Err(DomainError::invalid("script", "must not be empty"))
        } else if script.chars().count() > Self::MAX_BYTES || script.contains('\0') {
            Err(DomainError::invalid("script", "at most 256 KiB, without NUL"))
        } else {
            Ok(Self::Script(script))
        }
    }

    /// The argv that executes this spec (`sh -c <script>` for scripts).
    pub fn to_argv(&self) -> Vec<String> {
        match self {
            Self::Argv(argv) => argv.clone(),
            Self::Script(s) => vec!["sh".to_owned(), "-c".to_owned(), s.clone()],
        }
    }
}

/// Largest stdin a command may carry.
pub const MAX_STDIN_BYTES: usize = 1024 * 1024;

/// Longest `cwd`.
pub const MAX_CWD_CHARS: usize = 4096;

/// Validates a command's `cwd` (kept for callers that only check; `WorkingDir::parse` is the
/// rule).
pub fn validate_cwd(cwd: &str) -> DomainResult<()> {
    WorkingDir::parse(cwd).map(drop)
}

/// `TryFrom<String>` through `parse` (serde and the stores read with it) and back to `String`.
macro_rules! string_conversions {
    ($t:ident) => {
        impl TryFrom<String> for $t {
            type Error = DomainError;
            fn try_from(v: String) -> DomainResult<Self> {
                Self::parse(v)
            }
        }

        impl From<$t> for String {
            fn from(v: $t) -> Self {
                v.0
            }
        }
    };
}

/// A command's working directory: absolute, or relative to the project's workdir; non-empty, at
/// most `MAX_CWD_CHARS` characters, without NUL. Where it leads is the executor's business.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WorkingDir(String);

impl WorkingDir {
    /// Checks the path's form.
    pub fn parse(cwd: impl Into<String>) -> DomainResult<Self> {
        let cwd = cwd.into();
        if cwd.is_empty() || cwd.chars().count() > MAX_CWD_CHARS || cwd.contains('\0') {
            Err(DomainError::invalid("cwd", "must be a non-empty path of at most 4096 characters without NUL"))
        } else {
            Ok(Self(cwd))
        }
    }

    /// The path as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

string_conversions!(WorkingDir);

/// Text fed to a command's stdin: at most `MAX_STDIN_BYTES` bytes (NUL is allowed: it is data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CommandStdin(String);

impl CommandStdin {
    /// Checks the size.
    pub fn parse(stdin: impl Into<String>) -> DomainResult<Self> {
        let stdin = stdin.into();
        if stdin.len() > MAX_STDIN_BYTES {
            Err(DomainError::invalid("stdin", "at most 1 MiB"))
        } else {
            Ok(Self(stdin))
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The bytes an executor writes to the process.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0.into_bytes()
    }
}

string_conversions!(CommandStdin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_needs_exactly_one_form() {
        assert!(CommandSpec::parse(None, None).is_err());
        assert!(CommandSpec::parse(Some(vec!["ls".into()]), Some("ls".into())).is_err());
        assert!(CommandSpec::parse(Some(vec![]), None).is_err());
        assert!(CommandSpec::parse(Some(vec!["".into()]), None).is_err());
        assert!(CommandSpec::parse(None, Some("  ".into())).is_err());
        assert_eq!(
            CommandSpec::parse(None, Some("echo hi".into())).map(|s| s.to_argv()),
            Ok(vec!["sh".into(), "-c".into(), "echo hi".into()])
        );
    }

    fn refusal(field: &str, message: &str) -> DomainResult<()> {
        Err(DomainError::invalid(field, message))
    }

    #[test]
    fn working_dirs_are_non_empty_bounded_and_without_nul() {
        let rule = "must be a non-empty path of at most 4096 characters without NUL";
        for bad in [String::new(), "a\0b".into(), "é".repeat(MAX_CWD_CHARS + 1)] {
            assert_eq!(WorkingDir::parse(bad.clone()).map(drop), refusal("cwd", rule), "{bad:?}");
        }
        let longest = "é".repeat(MAX_CWD_CHARS);
        assert_eq!(WorkingDir::parse(longest.clone()).map(String::from), Ok(longest), "characters, not bytes");
        for good in ["sub", "/abs/path", "../up"] {
            assert_eq!(WorkingDir::parse(good).map(|w| w.as_str().to_owned()), Ok(good.to_owned()));
        }
        assert_eq!(validate_cwd(""), refusal("cwd", rule));
    }

    #[test]
    fn stdin_is_bounded_in_bytes_and_may_hold_nul() {
        let over = "é".repeat(MAX_STDIN_BYTES / 2) + "x";
        assert_eq!(CommandStdin::parse(over).map(drop), refusal("stdin", "at most 1 MiB"));
        let full = "x".repeat(MAX_STDIN_BYTES);
        assert_eq!(CommandStdin::parse(full.clone()).map(CommandStdin::into_bytes), Ok(full.into_bytes()));
        assert_eq!(CommandStdin::parse("in\0put").map(String::from), Ok("in\0put".to_owned()));
    }

    #[test]
    fn both_serialise_as_the_plain_strings_they_hold() {
        // Idempotency fingerprints hash the JSON of a submission: it must not change shape.
        let json = serde_json::json!({
            "cwd": WorkingDir::parse("sub").ok(),
            "stdin": CommandStdin::parse("fed").ok(),
        });
        assert_eq!(json.to_string(), r#"{"cwd":"sub","stdin":"fed"}"#);
        assert!(serde_json::from_str::<WorkingDir>(r#""""#).is_err());
    }
}
