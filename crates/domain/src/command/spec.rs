//! What a command runs and with what: the argv or script, its working directory and its stdin.

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

/// Validates a command's `cwd`: absolute or relative, no NUL, bounded.
pub fn validate_cwd(cwd: &str) -> DomainResult<()> {
    if cwd.is_empty() || cwd.chars().count() > MAX_CWD_CHARS || cwd.contains('\0') {
        Err(DomainError::invalid("cwd", "must be a non-empty path of at most 4096 characters without NUL"))
    } else {
        Ok(())
    }
}

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
}
