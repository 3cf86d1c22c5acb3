//! The output sink a worker hands to the executor: turns chunks into stored output events,
//! UTF-8 safe across chunk boundaries and bounded per stream.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use domain::command::Command;
use domain::ids::{CommandId, WorkerId};
use domain::output::OutputStream;
use domain::ports::{Clock, CommandQueue, OutputSink};
use domain::project::ProjectName;

use crate::signalling::Signals;

#[derive(Debug, Default)]
struct StreamState {
    pending: Vec<u8>,
    emitted: usize,
    stopped: bool,
}

/// The claimed command a sink stores output for, and who runs it (for the start log line).
pub(crate) struct SinkTarget<'a> {
    pub(crate) command: &'a Command,
    pub(crate) fence: i64,
    pub(crate) replica: &'a WorkerId,
}

/// Stores output events for one claimed command.
pub(crate) struct StoreSink {
    pub(crate) queue: Arc<dyn CommandQueue>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) signals: Arc<Signals>,
    pub(crate) id: CommandId,
    pub(crate) fence: i64,
    project: ProjectName,
    replica: WorkerId,
    trace_id: Option<String>,
    /// Event bytes per stream; past it, the stream's events stop (the final output keeps the tail).
    pub(crate) budget: usize,
    streams: Mutex<[StreamState; 2]>,
}

impl StoreSink {
    pub(crate) fn new(
        queue: Arc<dyn CommandQueue>,
        clock: Arc<dyn Clock>,
        signals: Arc<Signals>,
        target: SinkTarget<'_>,
        budget: usize,
    ) -> Self {
        let SinkTarget { command, fence, replica } = target;
        Self {
            queue,
            clock,
            signals,
            id: command.id,
            fence,
            project: command.project.clone(),
            replica: replica.clone(),
            trace_id: command.trace.as_ref().map(|t| t.trace_id().to_owned()),
            budget,
            streams: Mutex::new(Default::default()),
        }
    }

    /// Takes the longest valid UTF-8 prefix of pending + data, keeping an incomplete trailing
    /// sequence for the next chunk. Returns `None` once the stream's budget is spent.
    fn take_text(&self, stream: OutputStream, data: &[u8]) -> Option<String> {
        let mut streams = self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let state = &mut streams[stream as usize];
        if state.stopped {
            return None;
        }
        state.pending.extend_from_slice(data);
        let valid_up_to = match std::str::from_utf8(&state.pending) {
            Ok(_) => state.pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            // Invalid bytes (not merely incomplete): emit them replaced.
            Err(_) => state.pending.len(),
        };
        let room = self.budget.saturating_sub(state.emitted);
        let take = valid_up_to.min(room);
        if take < valid_up_to {
            state.stopped = true;
        }
        let bytes: Vec<u8> = state.pending.drain(..valid_up_to).take(take).collect();
        state.emitted += bytes.len();
        (!bytes.is_empty()).then(|| String::from_utf8_lossy(&bytes).into_owned())
    }
}

#[async_trait]
impl OutputSink for StoreSink {
    async fn emit(&self, stream: OutputStream, data: &[u8]) {
        let Some(text) = self.take_text(stream, data) else { return };
        match self.queue.append_output(self.id, self.fence, stream, &text, self.clock.now()).await {
            Ok(_) => self.signals.output_appended(self.id),
            Err(e) => tracing::warn!(command_id = %self.id, error = %e, "could not store output event"),
        }
    }

    /// The one "command started" line of every executor: operators grep for it by command id or
    /// trace id, on whichever replica ran it.
    async fn started(&self) {
        tracing::info!(
            command_id = %self.id,
            project = %self.project,
            replica = %self.replica,
            trace_id = self.trace_id.as_deref().unwrap_or(""),
            "command started"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::testing::{ManualClock, MemoryStore};

    fn sink(budget: usize) -> StoreSink {
        let project = domain::testing::sample_project("sink", 1);
        let command = domain::testing::sample_command(&project, domain::command::Priority::Normal, None).into_command();
        StoreSink::new(
            Arc::new(MemoryStore::new()),
            Arc::new(ManualClock::at_fixed_start()),
            Arc::new(Signals::default()),
            SinkTarget { command: &command, fence: 1, replica: &WorkerId::new("w") },
            budget,
        )
    }

    #[test]
    fn a_character_split_across_chunks_is_kept_whole() {
        let s = sink(100);
        let euro = "€".as_bytes();
        assert_eq!(s.take_text(OutputStream::Stdout, &euro[..1]), None);
        assert_eq!(s.take_text(OutputStream::Stdout, &euro[1..]).as_deref(), Some("€"));
    }

    #[test]
    fn events_stop_at_the_budget() {
        let s = sink(5);
        assert_eq!(s.take_text(OutputStream::Stderr, b"abc").as_deref(), Some("abc"));
        assert_eq!(s.take_text(OutputStream::Stderr, b"defg").as_deref(), Some("de"));
        assert_eq!(s.take_text(OutputStream::Stderr, b"h"), None);
        assert_eq!(s.take_text(OutputStream::Stdout, b"x").as_deref(), Some("x"), "streams are independent");
    }
}
