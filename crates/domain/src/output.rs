//! Command output: streams, capped capture keeping head and tail, and the event log.

use serde::{Deserialize, Serialize};

use crate::command::CommandStatus;
use crate::Timestamp;

/// One of a process's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl OutputStream {
    /// Name on the wire and in stores.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// Captures a stream up to a cap, keeping the first half and the last half of the cap when the
/// stream is longer: the head shows how it started, the tail how it ended.
#[derive(Debug, Clone)]
pub struct HeadTailBuffer {
    cap: usize,
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    total: u64,
}

impl HeadTailBuffer {
    /// A buffer keeping at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self { cap, head: Vec::new(), tail: std::collections::VecDeque::new(), total: 0 }
    }

    fn head_cap(&self) -> usize {
        self.cap - self.cap / 2
    }

    /// Appends bytes.
    pub fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        let room = self.head_cap().saturating_sub(self.head.len());
        let take = room.min(data.len());
        self.head.extend_from_slice(&data[..take]);
        data = &data[take..];
        let tail_cap = self.cap / 2;
        if data.len() >= tail_cap {
            self.tail.clear();
            self.tail.extend(&data[data.len() - tail_cap..]);
        } else {
            let overflow = (self.tail.len() + data.len()).saturating_sub(tail_cap);
            self.tail.drain(..overflow);
            self.tail.extend(data);
        }
    }

    /// Total bytes seen, kept or not.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// The kept bytes and whether anything was dropped in between.
    pub fn finish(self) -> CapturedOutput {
        let kept = self.head.len() + self.tail.len();
        let truncated = self.total > kept as u64;
        let mut data = self.head;
        data.extend(self.tail);
        CapturedOutput { data, truncated }
    }
}

/// The captured output of one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapturedOutput {
    /// Head and tail, concatenated.
    pub data: Vec<u8>,
    /// Whether bytes between head and tail were dropped.
    pub truncated: bool,
}

impl CapturedOutput {
    /// The bytes as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// The stored output of a finished command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandOutput {
    /// Captured stdout (head and tail when truncated).
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
    /// Whether stdout lost its middle.
    pub stdout_truncated: bool,
    /// Whether stderr lost its middle.
    pub stderr_truncated: bool,
}

/// What happened to a command, in order; the SSE stream replays these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// Bytes written to a stream.
    Output {
        /// Which stream.
        stream: OutputStream,
        /// The text (invalid UTF-8 replaced).
        data: String,
    },
    /// A status change.
    Status(CommandStatus),
    /// The command ended; readers attach the finished command.
    Exit,
}

/// One stored event with its per-command sequence number (the SSE event id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandEvent {
    /// Increasing, gap-free per command, starting at 1.
    pub seq: i64,
    /// What happened.
    pub kind: EventKind,
    /// When.
    pub at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_output_is_kept_whole() {
        let mut b = HeadTailBuffer::new(10);
        b.push(b"hello");
        assert_eq!(b.finish(), CapturedOutput { data: b"hello".to_vec(), truncated: false });
    }

    #[test]
    fn long_output_keeps_head_and_tail() {
        let mut b = HeadTailBuffer::new(10);
        for chunk in [&b"HEAD1"[..], b"middle-middle", b"TAIL9"] {
            b.push(chunk);
        }
        let out = b.finish();
        assert!(out.truncated);
        assert_eq!(out.data, b"HEAD1TAIL9".to_vec());
    }

    proptest! {
        #[test]
        fn capture_is_head_and_tail_of_the_stream(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..20), cap in 1usize..64) {
            let all: Vec<u8> = chunks.concat();
            let mut b = HeadTailBuffer::new(cap);
            for c in &chunks { b.push(c); }
            let out = b.finish();
            if all.len() <= cap {
                prop_assert_eq!(out.data, all);
                prop_assert!(!out.truncated);
            } else {
                let head = cap - cap / 2;
                let tail = cap / 2;
                let mut expected = all[..head].to_vec();
                expected.extend_from_slice(&all[all.len() - tail..]);
                prop_assert_eq!(out.data, expected);
                prop_assert!(out.truncated);
            }
        }
    }
}
