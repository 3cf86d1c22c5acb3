//! The ledger: every command appends its own lines to a file in its project's workspace —
//! `start <token> <unix ns>` when it begins, `end <token>` when it is done — so the runs are
//! counted by the commands themselves, not by the service under test. Each replica has its
//! own workspaces directory, so the file a line is in tells which replica ran the command.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};

/// The ledger's file name inside a project's workspace.
pub const FILE: &str = "ledger";

/// The script of a ledger command: a start line, `sleep_ms` of work, an end line.
pub fn script(token: &str, sleep_ms: u64) -> String {
    format!(
        "echo \"start {token} $(date +%s%N)\" >> {FILE}; sleep {}.{:03}; echo \"end {token}\" >> {FILE}",
        sleep_ms / 1000,
        sleep_ms % 1000
    )
}

/// What the ledgers say about one token.
#[derive(Debug, Clone, Default)]
pub struct Runs {
    /// Start lines (more than one: the command ran twice).
    pub starts: u32,
    /// End lines.
    pub ends: u32,
    /// Which replicas (by index) wrote start lines.
    pub replicas: Vec<usize>,
    /// When it started (the first start line).
    pub started_at: Option<DateTime<Utc>>,
}

/// Reads the ledger files `(replica index, path)`; token → runs.
pub fn read(files: &[(usize, &Path)]) -> BTreeMap<String, Runs> {
    let mut out: BTreeMap<String, Runs> = BTreeMap::new();
    for (replica, path) in files {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some("start"), Some(token)) => {
                    let runs = out.entry(token.to_owned()).or_default();
                    runs.starts += 1;
                    runs.replicas.push(*replica);
                    let at = parts.next().and_then(|ns| ns.parse::<i64>().ok()).map(DateTime::from_timestamp_nanos);
                    runs.started_at = runs.started_at.or(at);
                }
                (Some("end"), Some(token)) => out.entry(token.to_owned()).or_default().ends += 1,
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_and_end_lines_are_counted_per_token_and_replica() {
        let dir = tempfile::tempdir().expect("dir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "start t1 1700000000000000000\nend t1\nstart t2 1700000000500000000\n").expect("write");
        std::fs::write(&b, "start t2 1700000001000000000\nend t2\ngarbage\n").expect("write");
        let runs = read(&[(0, &a), (1, &b)]);
        assert_eq!((runs["t1"].starts, runs["t1"].ends, runs["t1"].replicas.clone()), (1, 1, vec![0]));
        assert_eq!((runs["t2"].starts, runs["t2"].ends, runs["t2"].replicas.clone()), (2, 1, vec![0, 1]));
        assert_eq!(runs["t2"].started_at.map(|t| t.timestamp_millis()), Some(1_700_000_000_500));
    }

    #[test]
    fn the_script_sleeps_in_seconds() {
        assert!(script("x", 1250).contains("sleep 1.250;"));
        assert!(script("x", 80).contains("sleep 0.080;"));
    }
}
