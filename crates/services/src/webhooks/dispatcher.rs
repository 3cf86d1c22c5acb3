//! `WebhookDispatcher`: turns outbox events into deliveries, leases the due ones, sends them
//! with bounded concurrency, records every attempt, schedules retries, and disables endpoints
//! that answer `410 Gone` or fail for days. Safe with several replicas: leases are fenced.

use std::sync::Arc;
use std::time::Duration;

use domain::audit::{AuditEntry, AuditOutcome};
use domain::breaker::BreakerConfig;
use domain::ports::Clock;
use domain::webhook::{
    classify, AttemptClass, AttemptRecord, AttemptReport, DeliveryQueue, LeaseRequest, LeasedDelivery, NextStep,
    RetryPolicy, SendOutcome, WebhookRepository, WebhookRequest, WebhookSender, ENDPOINT_BREAKER,
};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::breakers::Breakers;
use super::recorder::AttemptRecorder;
use crate::audit::AuditService;
use crate::metrics::{WEBHOOK_DELIVERIES_TOTAL, WEBHOOK_DELIVERY_DURATION_SECONDS, WEBHOOK_ENDPOINTS_DISABLED_TOTAL};
use crate::signalling::Signals;

/// Most rounds of fan-out per loop turn, so a flood of events cannot starve sending.
const FAN_OUT_ROUNDS: u32 = 10;

/// While sends are in flight, how long a few free slots wait for more to free up before they
/// are leased anyway: a lease costs a round trip however many it takes, so leasing one slot
/// at a time as each send ends would cost one per delivery.
const LEASE_COALESCE: Duration = Duration::from_millis(2);

/// How the dispatcher behaves; `new` gives the production defaults.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// This replica's name in leases.
    pub owner: String,
    /// Sends in flight at once.
    pub concurrency: usize,
    /// Deliveries leased per round at most.
    pub batch: u32,
    /// Events fanned out per round at most.
    pub fan_out_batch: u32,
    /// Lease length; longer than a send can take (the sender's timeout), or a delivery could
    /// be sent twice.
    pub lease: Duration,
    /// Fallback poll when nothing wakes the dispatcher (retries come due this way).
    pub poll_every: Duration,
    /// Retry schedule, jitter, slow-down floor, disable threshold.
    pub retry: RetryPolicy,
    /// Per-endpoint breakers.
    pub breaker: BreakerConfig,
    /// On shutdown, how long sends in flight may take before they are abandoned (their leases
    /// run out and another replica, or the next start, sends them again with the same id).
    pub shutdown_grace: Duration,
}

impl DispatcherConfig {
    /// Defaults for the replica `owner`: 16 concurrent sends, 60 s leases (four times the 15 s
    /// send timeout), the schedule of DESIGN.md §3. Old deliveries are deleted by the
    /// retention job (`crate::retention`), not here, so one replica at a time does it.
    pub fn new(owner: impl Into<String>) -> Self {
        Self {
            owner: owner.into(),
            concurrency: 16,
            batch: 64,
            fan_out_batch: 500,
            lease: Duration::from_secs(60),
            poll_every: Duration::from_secs(1),
            retry: RetryPolicy::default(),
            breaker: ENDPOINT_BREAKER,
            shutdown_grace: Duration::from_secs(15),
        }
    }
}

/// The ports the dispatcher uses.
#[derive(Clone)]
#[expect(missing_debug_implementations, reason = "holds trait objects that have no Debug")]
pub struct DispatcherPorts {
    /// Subscriptions (to disable dead endpoints).
    pub webhooks: Arc<dyn WebhookRepository>,
    /// The outbox and the deliveries.
    pub deliveries: Arc<dyn DeliveryQueue>,
    /// HTTP.
    pub sender: Arc<dyn WebhookSender>,
    /// Where disabled endpoints are recorded.
    pub audit: AuditService,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Wakes it for due deliveries (pings, redeliveries) and command state changes, so
    /// events go out at once instead of at the next poll.
    pub signals: Arc<Signals>,
}

/// Delivers webhooks until shut down.
pub struct WebhookDispatcher {
    ports: DispatcherPorts,
    config: DispatcherConfig,
    breakers: Breakers,
    slots: Arc<Semaphore>,
    recorder: AttemptRecorder,
}

impl std::fmt::Debug for WebhookDispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookDispatcher").field("config", &self.config).finish_non_exhaustive()
    }
}

impl WebhookDispatcher {
    /// A dispatcher over `ports`.
    pub fn new(ports: DispatcherPorts, config: DispatcherConfig) -> Arc<Self> {
        let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
        let breakers = Breakers::new(config.breaker);
        let recorder = AttemptRecorder::new(config.batch as usize);
        Arc::new(Self { ports, config, breakers, slots, recorder })
    }

    /// Free slots worth a lease of their own while sends are in flight: half of them.
    fn lease_threshold(&self) -> usize {
        (self.config.concurrency / 2).clamp(1, self.config.batch.max(1) as usize)
    }

    /// Delivers until `shutdown` fires, then lets sends in flight finish for `shutdown_grace`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut sending = JoinSet::new();
        let mut changes = Some(self.ports.signals.subscribe_state());
        tracing::info!(owner = %self.config.owner, concurrency = self.config.concurrency, "webhook dispatcher started");
        // Events appear only with a signal (a state change, a queued ping or redelivery) or, from
        // elsewhere, by the poll: a turn woken by a send that ended has nothing to fan out.
        let mut fan_out_due = true;
        // Whether a lease may come up with something: not after one that came back short until
        // something changes (a signal, the poll, a send that ended and may have scheduled a retry).
        let mut lease_due = true;
        let mut last_lease = tokio::time::Instant::now();
        while !shutdown.is_cancelled() {
            if fan_out_due {
                last_lease = tokio::time::Instant::now();
                let (more, full) = self.fan_out_and_start_sends(&mut sending).await;
                fan_out_due = more && self.fan_out().await;
                // Not after a lease that came back short and left no events behind: it took
                // everything due, its own new deliveries included.
                lease_due = full || more;
            }
            while sending.try_join_next().is_some() {}
            let free = self.slots.available_permits();
            let worth_it =
                sending.is_empty() || free >= self.lease_threshold() || last_lease.elapsed() >= LEASE_COALESCE;
            if lease_due && free > 0 && worth_it {
                last_lease = tokio::time::Instant::now();
                let full = self.start_sends(&mut sending).await;
                lease_due = full;
                if full && self.slots.available_permits() >= self.lease_threshold() {
                    continue;
                }
            }
            let coalescing = lease_due && free > 0 && !worth_it;
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = self.ports.signals.deliveries_due() => fan_out_due = true,
                () = changed(&mut changes) => fan_out_due = true,
                Some(_) = sending.join_next(), if !sending.is_empty() => lease_due = true,
                () = tokio::time::sleep_until(last_lease + LEASE_COALESCE), if coalescing => {}
                () = tokio::time::sleep(self.config.poll_every) => fan_out_due = true,
            }
        }
        self.drain(sending).await;
    }

    /// One round without the loop: fan out, lease what is due, send it all and wait. Returns
    /// how many deliveries were leased. For tests and benchmarks.
    pub async fn run_once(self: &Arc<Self>) -> usize {
        let mut sending = JoinSet::new();
        let (more, mut full) = self.fan_out_and_start_sends(&mut sending).await;
        if more {
            self.fan_out().await;
            full = true;
        }
        let mut leased = sending.len();
        while full {
            // Wait for room rather than leasing deliveries that would sit in their lease, and
            // for enough of it to be worth a lease.
            while sending.join_next().await.is_some() && self.slots.available_permits() < self.lease_threshold() {}
            let before = sending.len();
            full = self.start_sends(&mut sending).await;
            leased += sending.len() - before;
        }
        while sending.join_next().await.is_some() {}
        leased
    }

    /// Fans out what the outbox holds; returns whether more may be left (the rounds ran out).
    async fn fan_out(&self) -> bool {
        for _ in 0..FAN_OUT_ROUNDS {
            match self.ports.deliveries.fan_out(self.ports.clock.now(), self.config.fan_out_batch).await {
                Ok(done) if done.events < self.config.fan_out_batch => return false,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "fanning out webhook events failed");
                    return false;
                }
            }
        }
        true
    }

    /// What a lease for the free slots asks for, or `None` when no slot is free.
    fn lease_request(&self) -> Option<LeaseRequest> {
        let free = u32::try_from(self.slots.available_permits()).unwrap_or(u32::MAX).min(self.config.batch);
        if free == 0 {
            return None;
        }
        let now = self.ports.clock.now();
        Some(LeaseRequest {
            owner: self.config.owner.clone(),
            now,
            lease: self.config.lease,
            limit: free,
            exclude: self.breakers.open_at(now),
        })
    }

    /// Starts sending `leased`, one free slot each.
    fn spawn_sends(self: &Arc<Self>, leased: Vec<LeasedDelivery>, sending: &mut JoinSet<()>) {
        for delivery in leased {
            let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else { break };
            let me = Arc::clone(self);
            sending.spawn(async move { me.deliver(delivery, permit).await });
        }
    }

    /// Fans out one round and leases for the free slots in one call (the store's one round
    /// trip from an event to its first attempt), and starts sending what it leased. Returns
    /// whether events may be left in the outbox and whether the lease came back full.
    async fn fan_out_and_start_sends(self: &Arc<Self>, sending: &mut JoinSet<()>) -> (bool, bool) {
        // No free slot: nothing to lease, and the caller fans out (once, so that a flood of
        // events stays bounded per turn).
        let Some(request) = self.lease_request() else { return (true, true) };
        match self.ports.deliveries.fan_out_and_lease(self.config.fan_out_batch, &request).await {
            Ok(done) => {
                // Deliveries it made but could not lease are due for the next lease too.
                let full = done.leased.len() == request.limit as usize || done.left_unleased;
                self.spawn_sends(done.leased, sending);
                (done.fan_out.events >= self.config.fan_out_batch, full)
            }
            Err(e) => {
                tracing::warn!(error = %e, "fanning out and leasing webhook deliveries failed");
                (false, true)
            }
        }
    }

    /// Leases as many due deliveries as there are free slots and starts sending them; returns
    /// whether the lease came back full (more may be due).
    async fn start_sends(self: &Arc<Self>, sending: &mut JoinSet<()>) -> bool {
        let Some(request) = self.lease_request() else { return true };
        let leased = match self.ports.deliveries.lease_due(&request).await {
            Ok(leased) => leased,
            Err(e) => {
                tracing::warn!(error = %e, "leasing webhook deliveries failed");
                return false;
            }
        };
        let full = leased.len() == request.limit as usize;
        self.spawn_sends(leased, sending);
        full
    }

    async fn drain(&self, mut sending: JoinSet<()>) {
        let grace = tokio::time::sleep(self.config.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                next = sending.join_next() => if next.is_none() { break },
                () = &mut grace => {
                    tracing::warn!(left = sending.len(), "shutdown grace over: abandoning webhook sends (their leases will run out)");
                    sending.shutdown().await;
                    break;
                }
            }
        }
        tracing::info!("webhook dispatcher stopped");
    }

    /// One attempt in a `webhook.deliver` client span; the receiver gets its `traceparent`.
    #[tracing::instrument(
        name = "webhook.deliver",
        skip_all,
        fields(
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            delivery_id = %leased.delivery.id,
            webhook_id = %leased.webhook.id,
            attempt = leased.delivery.attempts + 1,
            http.request.method = "POST",
            server.address = %leased.webhook.url.to_url().host_str().unwrap_or_default(),
            http.response.status_code = tracing::field::Empty,
        )
    )]
    async fn deliver(self: Arc<Self>, leased: LeasedDelivery, slot: OwnedSemaphorePermit) {
        let LeasedDelivery { delivery, webhook, event, fence, .. } = leased;
        let now = self.ports.clock.now();
        if let Err(retry_at) = self.breakers.acquire(webhook.id, now) {
            if let Err(e) = self.ports.deliveries.release(delivery.id, fence, retry_at).await {
                tracing::warn!(error = %e, "handing back a delivery held by the breaker failed");
            }
            metrics::counter!(WEBHOOK_DELIVERIES_TOTAL, "outcome" => "deferred").increment(1);
            return;
        }
        let request = WebhookRequest {
            url: webhook.url.clone(),
            message_id: delivery.id.to_string(),
            timestamp: now,
            payload: event.payload.as_str().to_owned(),
            secrets: webhook.signing_secrets(now),
            traceparent: crate::trace_context::of_span(&tracing::Span::current()).map(|t| t.traceparent().to_owned()),
        };
        let outcome = self.ports.sender.send(&request).await;
        // A slot bounds sends, not store writes: the next lease need not wait for this attempt's
        // batch to be recorded (the delivery stays leased until it is).
        drop(slot);
        let span = tracing::Span::current();
        if let Some(status) = outcome.status {
            span.record("http.response.status_code", status);
        }
        metrics::histogram!(WEBHOOK_DELIVERY_DURATION_SECONDS).record(outcome.latency.as_secs_f64());
        let class = classify(&outcome);
        if !class.is_success() {
            span.record("otel.status_code", "ERROR");
        }
        let done_at = self.ports.clock.now();
        self.breakers.record(webhook.id, done_at, class.is_success());
        let next =
            self.config.retry.next_step(class, delivery.attempts + 1, outcome.retry_after, done_at, rand::random());
        let attempt = AttemptRecord { id: delivery.id, fence, report: report(now, &outcome), next };
        let recorded = self.recorder.record(&*self.ports.deliveries, attempt).await;
        let label = match recorded {
            Ok(Some(_)) => outcome_label(next),
            Ok(None) => {
                tracing::warn!("the delivery's lease was lost before its attempt could be recorded");
                "stale"
            }
            Err(e) => {
                tracing::error!(error = %e, "recording a webhook attempt failed");
                "stale"
            }
        };
        metrics::counter!(WEBHOOK_DELIVERIES_TOTAL, "outcome" => label).increment(1);
        if class == AttemptClass::Gone {
            self.disable(webhook.id, "gone", "the endpoint answered 410 Gone".into()).await;
        } else if !class.is_success() {
            let since = webhook.failing_since.unwrap_or(now);
            if self.config.retry.should_disable(Some(since), done_at) {
                let reason = format!("every attempt failed since {}", since.to_rfc3339());
                self.disable(webhook.id, "failing", reason).await;
            }
        }
    }

    async fn disable(&self, id: domain::webhook::WebhookId, label: &'static str, reason: String) {
        self.breakers.forget(id);
        let now = self.ports.clock.now();
        match self.ports.webhooks.disable(id, &reason, now).await {
            Ok(done) if done.was_enabled => {
                metrics::counter!(WEBHOOK_ENDPOINTS_DISABLED_TOTAL, "reason" => label).increment(1);
                tracing::warn!(webhook_id = %id, %reason, "webhook endpoint disabled");
                self.ports
                    .audit
                    .record(AuditEntry {
                        at: now,
                        actor: None,
                        client_ip: None,
                        action: "webhooks.disable".into(),
                        resource: format!("webhook/{id}"),
                        project: None,
                        outcome: AuditOutcome::Success,
                        detail: Some(reason),
                        request_id: None,
                        trace_id: None,
                        count: 1,
                    })
                    .await;
            }
            Ok(_) => {}
            Err(e) => tracing::error!(webhook_id = %id, error = %e, "disabling a webhook endpoint failed"),
        }
    }
}

/// Resolves when the watched value changes; never when there is nothing to watch (or the
/// sender is gone), so it never busy-loops the `select!`.
async fn changed(changes: &mut Option<watch::Receiver<u64>>) {
    match changes {
        Some(rx) => {
            if rx.changed().await.is_err() {
                *changes = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

fn report(at: domain::Timestamp, outcome: &SendOutcome) -> AttemptReport {
    AttemptReport {
        at,
        status_code: outcome.status,
        latency_ms: u32::try_from(outcome.latency.as_millis()).unwrap_or(u32::MAX),
        response_snippet: outcome.snippet.clone(),
        error: outcome.error.as_ref().map(|e| format!("{}: {}", e.kind.as_str(), e.message)),
    }
}

fn outcome_label(next: NextStep) -> &'static str {
    match next {
        NextStep::Succeeded => "succeeded",
        NextStep::Retry { .. } => "retrying",
        NextStep::Failed => "failed",
        NextStep::Dead => "dead",
    }
}
