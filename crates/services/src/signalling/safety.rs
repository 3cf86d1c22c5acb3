//! `SafetyPoll`: the one store read per tick that stands in for a lost signal, shared by every
//! event stream and `?wait=` request of a replica.
//!
//! Pushes wake streams and waiters (`Signals::watch_command`); only a lost one (a NOTIFY whose
//! publish failed) needs the store polled. Polled per stream, that was one read per stream per
//! tick: 9,000 idle streams made 1,800 reads a second. Here one statement a tick asks for the
//! last event number of every watched command, and only the watchers of a command whose log
//! grew since the previous tick are woken to read it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use domain::ids::CommandId;
use domain::ports::CommandRepository;
use domain::DomainResult;
use tokio_util::sync::CancellationToken;

use super::Signals;

/// Wakes the watchers of commands whose event log grew without a signal saying so.
pub struct SafetyPoll {
    signals: Arc<Signals>,
    commands: Arc<dyn CommandRepository>,
    /// The last event number each watched command had at the previous tick.
    seen: HashMap<CommandId, i64>,
}

impl std::fmt::Debug for SafetyPoll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetyPoll").field("watched", &self.seen.len()).finish_non_exhaustive()
    }
}

impl SafetyPoll {
    /// A poll of `commands` for the commands watched through `signals`.
    pub fn new(signals: Arc<Signals>, commands: Arc<dyn CommandRepository>) -> Self {
        Self { signals, commands, seen: HashMap::new() }
    }

    /// One tick: one store read for all watched commands; wakes the watchers of each command
    /// whose last event is newer than at the previous tick, or that this poll had not seen
    /// (a watcher may have read the store just before an unsignalled event, and this poll has
    /// nothing to compare with). Returns how many commands it woke.
    pub async fn tick(&mut self) -> DomainResult<usize> {
        let watched = self.signals.watched_commands();
        if watched.is_empty() {
            self.seen.clear();
            return Ok(0);
        }
        let last = self.commands.last_event_seqs(&watched).await?;
        let mut seen = HashMap::with_capacity(last.len());
        let mut woken = 0;
        for (id, seq) in last {
            if self.seen.get(&id).is_none_or(|before| *before < seq) {
                self.signals.wake_watchers(id);
                woken += 1;
            }
            seen.insert(id, seq);
        }
        // Commands nobody watches any more are forgotten with the old map.
        self.seen = seen;
        Ok(woken)
    }

    /// Ticks every `every` until `stop` fires. A failed read is logged and tried at the next
    /// tick; meanwhile pushes still wake everyone.
    pub async fn run(mut self, every: Duration, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Err(e) = self.tick().await {
                tracing::warn!(error = %e, "the event streams' safety poll could not read the store");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, reason = "tests: a failed expectation is a failed test")]
mod tests {
    use domain::command::Priority;
    use domain::output::OutputStream;
    use domain::ports::{CommandQueue, ProjectRepository};
    use domain::testing::{now_micros, sample_command, sample_project, MemoryStore};

    use super::*;

    #[tokio::test]
    async fn one_read_wakes_only_the_watchers_of_commands_whose_log_grew() {
        let store = Arc::new(MemoryStore::new());
        let project = sample_project("web", 4);
        ProjectRepository::create(&*store, &project).await.expect("project");
        let (a, b) =
            (sample_command(&project, Priority::Normal, None), sample_command(&project, Priority::Normal, None));
        for c in [&a, &b] {
            CommandRepository::enqueue(&*store, c.clone()).await.expect("enqueue");
        }
        let signals = Arc::new(Signals::default());
        let mut poll = SafetyPoll::new(signals.clone(), store.clone());
        assert_eq!(poll.tick().await, Ok(0), "nothing watched, nothing read");

        let (mut watch_a, mut watch_b) = (signals.watch_command(a.id), signals.watch_command(b.id));
        assert_eq!(poll.tick().await, Ok(2), "commands seen for the first time wake their watchers");
        assert!(watch_a.has_changed().expect("open") && watch_b.has_changed().expect("open"));
        watch_a.borrow_and_update();
        watch_b.borrow_and_update();
        assert_eq!(poll.tick().await, Ok(0), "no new events, nobody woken");
        assert!(!watch_a.has_changed().expect("open"));

        // An event no signal announced (as when a NOTIFY was lost).
        let worker = domain::ids::WorkerId::new("w");
        let claim = CommandQueue::claim_next(&*store, &worker, now_micros(), Duration::from_secs(60))
            .await
            .expect("claim")
            .expect("a command to claim");
        let claimed = claim.command.id;
        let appended =
            CommandQueue::append_output(&*store, claimed, claim.fence, OutputStream::Stdout, "x", now_micros()).await;
        assert_eq!(appended, Ok(true));
        assert_eq!(poll.tick().await, Ok(1), "only the command whose log grew");
        let (grew, still) = if claimed == a.id { (&watch_a, &watch_b) } else { (&watch_b, &watch_a) };
        assert!(grew.has_changed().expect("open") && !still.has_changed().expect("open"));

        drop((watch_a, watch_b));
        assert_eq!(poll.tick().await, Ok(0));
        assert!(poll.seen.is_empty(), "unwatched commands are forgotten");
    }
}
