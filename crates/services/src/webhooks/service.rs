//! `WebhookService`: subscriptions, secret rotation, test pings, redelivery and delivery
//! tracking, for keys with `webhooks:manage`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use domain::api_key::{ProjectAccess, Scope};
use domain::pagination::{Page, PageRequest};
use domain::pod::{PodChange, PodStatus};
use domain::ports::Clock;
use domain::project::ProjectName;
use domain::webhook::{
    ping_event, pod_change_event, pod_event, Attempt, Delivery, DeliveryDetail, DeliveryFilter, DeliveryId,
    DeliveryQueue, DeliveryStatus, EventSet, OutboxEvent, PreviousWebhookSecret, Webhook, WebhookId, WebhookRepository,
    WebhookSecret, WebhookSender, WebhookUrl,
};
use domain::{DomainError, DomainResult};
use rand::RngCore;

use crate::access::Principal;
use crate::signalling::Signals;

/// Longest grace period of a rotated-out secret: a week.
pub const MAX_ROTATION_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Random bytes in a new secret.
const SECRET_BYTES: usize = 32;
/// Why an endpoint a client switched off is disabled.
const DISABLED_BY_CLIENT: &str = "disabled by a client";

/// What a new subscription wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWebhook {
    /// Where to POST.
    pub url: WebhookUrl,
    /// Event types (the HTTP layer defaults a missing list to every type).
    pub events: EventSet,
    /// Projects (`All` when the client gave no list).
    pub projects: ProjectAccess,
}

/// A change to a subscription; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookPatch {
    /// New target.
    pub url: Option<WebhookUrl>,
    /// New event types.
    pub events: Option<EventSet>,
    /// New project filter.
    pub projects: Option<ProjectAccess>,
    /// Switch it on (clearing the reason and the failure streak) or off.
    pub enabled: Option<bool>,
}

/// The webhook use cases.
pub struct WebhookService {
    webhooks: Arc<dyn WebhookRepository>,
    deliveries: Arc<dyn DeliveryQueue>,
    sender: Arc<dyn WebhookSender>,
    clock: Arc<dyn Clock>,
    signals: Arc<Signals>,
}

impl std::fmt::Debug for WebhookService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookService").finish_non_exhaustive()
    }
}

fn new_secret() -> DomainResult<WebhookSecret> {
    let mut key = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut key);
    WebhookSecret::from_key(&key)
}

/// Whether `actor` may see a subscription: keys limited to some projects see only subscriptions
/// limited to projects among theirs (a subscription to every project would leak the others).
fn visible_to(actor: &Principal, projects: &ProjectAccess) -> bool {
    match (&actor.projects, projects) {
        (ProjectAccess::All, _) => true,
        (ProjectAccess::Only(mine), ProjectAccess::Only(theirs)) => theirs.is_subset(mine),
        (ProjectAccess::Only(_), ProjectAccess::All) => false,
    }
}

fn check_projects(actor: &Principal, projects: &ProjectAccess) -> DomainResult<()> {
    if let ProjectAccess::Only(set) = projects {
        if set.is_empty() {
            return Err(DomainError::invalid(
                "projects",
                "name at least one project, or leave it out for every project",
            ));
        }
    }
    if visible_to(actor, projects) {
        Ok(())
    } else {
        Err(DomainError::Forbidden("this API key may only subscribe to projects it can see".into()))
    }
}

impl WebhookService {
    /// A service over the webhook ports; `sender` checks targets, `signals` wakes the dispatcher.
    pub fn new(
        webhooks: Arc<dyn WebhookRepository>,
        deliveries: Arc<dyn DeliveryQueue>,
        sender: Arc<dyn WebhookSender>,
        clock: Arc<dyn Clock>,
        signals: Arc<Signals>,
    ) -> Self {
        Self { webhooks, deliveries, sender, clock, signals }
    }

    /// Creates a subscription and returns it with its secret (the only time the secret is
    /// shown). `Invalid` on `url` for a target the SSRF guard refuses.
    pub async fn create(&self, actor: &Principal, new: NewWebhook) -> DomainResult<(Webhook, WebhookSecret)> {
        actor.require(Scope::WebhooksManage)?;
        check_projects(actor, &new.projects)?;
        self.sender.check_target(&new.url).await?;
        let secret = new_secret()?;
        let now = self.clock.now();
        let webhook = Webhook {
            id: WebhookId::generate(),
            url: new.url,
            events: new.events,
            projects: new.projects,
            secret: secret.clone(),
            previous_secret: None,
            enabled: true,
            disabled_reason: None,
            failing_since: None,
            created_at: now,
            updated_at: now,
        };
        self.webhooks.create(&webhook).await?;
        tracing::info!(webhook_id = %webhook.id, url = %webhook.url, "webhook created");
        Ok((webhook, secret))
    }

    /// A visible subscription (its secret included: callers must not show it).
    pub async fn get(&self, actor: &Principal, id: WebhookId) -> DomainResult<Webhook> {
        actor.require(Scope::WebhooksManage)?;
        self.visible(actor, id).await
    }

    async fn visible(&self, actor: &Principal, id: WebhookId) -> DomainResult<Webhook> {
        let webhook = self.webhooks.get(id).await?;
        if visible_to(actor, &webhook.projects) {
            Ok(webhook)
        } else {
            Err(DomainError::NotFound("webhook".into()))
        }
    }

    /// Visible subscriptions, paged by id. A page may hold fewer than `limit` items for keys
    /// limited to some projects (others' subscriptions are left out after paging).
    pub async fn list(&self, actor: &Principal, page: PageRequest) -> DomainResult<Page<Webhook>> {
        actor.require(Scope::WebhooksManage)?;
        let mut found = self.webhooks.list(page).await?;
        found.items.retain(|w| visible_to(actor, &w.projects));
        Ok(found)
    }

    /// Applies a patch. A new URL is checked like at creation; `enabled: false` disables the
    /// endpoint (its pending deliveries are dropped), `enabled: true` re-enables it.
    pub async fn update(&self, actor: &Principal, id: WebhookId, patch: WebhookPatch) -> DomainResult<Webhook> {
        actor.require(Scope::WebhooksManage)?;
        let mut webhook = self.visible(actor, id).await?;
        let now = self.clock.now();
        if patch.url.is_some() || patch.events.is_some() || patch.projects.is_some() {
            if let Some(url) = patch.url {
                self.sender.check_target(&url).await?;
                webhook.url = url;
            }
            if let Some(projects) = patch.projects {
                check_projects(actor, &projects)?;
                webhook.projects = projects;
            }
            if let Some(events) = patch.events {
                webhook.events = events;
            }
            webhook.updated_at = now;
            webhook = self.webhooks.update(&webhook).await?;
        }
        match patch.enabled {
            Some(true) if !webhook.enabled => webhook = self.webhooks.enable(id, now).await?,
            Some(false) if webhook.enabled => {
                webhook = self.webhooks.disable(id, DISABLED_BY_CLIENT, now).await?.webhook
            }
            _ => {}
        }
        Ok(webhook)
    }

    /// Deletes a subscription and its delivery history.
    pub async fn delete(&self, actor: &Principal, id: WebhookId) -> DomainResult<()> {
        actor.require(Scope::WebhooksManage)?;
        self.visible(actor, id).await?;
        self.webhooks.delete(id).await?;
        tracing::info!(webhook_id = %id, "webhook deleted");
        Ok(())
    }

    /// Replaces the secret and returns the new one (shown once). For `grace` (at most
    /// `MAX_ROTATION_GRACE`) deliveries are signed with both, so receivers can switch over;
    /// a zero grace drops the old secret at once. An older previous secret is dropped.
    pub async fn rotate_secret(
        &self,
        actor: &Principal,
        id: WebhookId,
        grace: Duration,
    ) -> DomainResult<(Webhook, WebhookSecret)> {
        actor.require(Scope::WebhooksManage)?;
        if grace > MAX_ROTATION_GRACE {
            return Err(DomainError::invalid("grace_seconds", "must be at most 604800 (a week)"));
        }
        let current = self.visible(actor, id).await?;
        let now = self.clock.now();
        let secret = new_secret()?;
        let previous = (!grace.is_zero()).then(|| PreviousWebhookSecret {
            secret: current.secret,
            valid_until: now + TimeDelta::from_std(grace).unwrap_or(TimeDelta::MAX),
        });
        let webhook = self.webhooks.rotate_secret(id, &secret, previous.as_ref(), now).await?;
        tracing::info!(webhook_id = %id, grace_seconds = grace.as_secs(), "webhook secret rotated");
        Ok((webhook, secret))
    }

    /// Queues a `ping` for this subscription only. `Conflict` while it is disabled.
    pub async fn test(&self, actor: &Principal, id: WebhookId) -> DomainResult<OutboxEvent> {
        actor.require(Scope::WebhooksManage)?;
        let webhook = self.visible(actor, id).await?;
        if !webhook.enabled {
            return Err(DomainError::Conflict("the webhook is disabled; enable it before testing".into()));
        }
        let ping = ping_event(id, self.clock.now())?;
        self.deliveries.append_event(&ping).await?;
        self.signals.delivery_due();
        Ok(ping)
    }

    /// Queues the event of a delivery again, as a new delivery (new `webhook-id`).
    pub async fn redeliver(&self, actor: &Principal, id: DeliveryId) -> DomainResult<Delivery> {
        self.get_delivery(actor, id).await?;
        let delivery = self.deliveries.redeliver(id, DeliveryId::generate(), self.clock.now()).await?;
        self.signals.delivery_due();
        Ok(delivery)
    }

    /// Deliveries of a visible subscription, optionally in one status, paged by id.
    pub async fn list_deliveries(
        &self,
        actor: &Principal,
        webhook: WebhookId,
        status: Option<DeliveryStatus>,
        page: PageRequest,
    ) -> DomainResult<Page<Delivery>> {
        actor.require(Scope::WebhooksManage)?;
        self.visible(actor, webhook).await?;
        self.deliveries.list_deliveries(&DeliveryFilter { webhook, status }, page).await
    }

    /// The latest attempt of each listed delivery, for the listing's status, latency and error
    /// (the caller has just listed them, so visibility was checked there).
    pub async fn last_attempts(&self, deliveries: &[Delivery]) -> DomainResult<HashMap<DeliveryId, Attempt>> {
        let ids: Vec<DeliveryId> = deliveries.iter().map(|d| d.id).collect();
        Ok(self.deliveries.last_attempts(&ids).await?.into_iter().collect())
    }

    /// One delivery with every attempt, if its subscription is visible.
    pub async fn get_delivery(&self, actor: &Principal, id: DeliveryId) -> DomainResult<DeliveryDetail> {
        actor.require(Scope::WebhooksManage)?;
        let detail = self.deliveries.get_delivery(id).await?;
        self.visible(actor, detail.delivery.webhook_id)
            .await
            .map_err(|_| DomainError::NotFound("webhook delivery".into()))?;
        Ok(detail)
    }

    /// Records the event of a change the cluster-wide pod watch reported. Its id comes from the
    /// change's occurrence: a change already recorded (reported again by the next leader) is
    /// not recorded twice.
    pub async fn pod_change_reported(&self, change: &PodChange) -> DomainResult<()> {
        let Some(event) = pod_change_event(change, self.clock.now()) else { return Ok(()) };
        match self.deliveries.append_event(&event).await {
            Ok(()) => {
                self.signals.delivery_due();
                Ok(())
            }
            Err(DomainError::Conflict(_)) => {
                tracing::debug!(project = %change.project, occurrence = %change.occurrence, "pod change already recorded");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Records that a project's pod reached `status` (`pod.ready`, `pod.failed`,
    /// `pod.stopped`; other states are no event). For whoever watches pods.
    pub async fn pod_changed(&self, project: &ProjectName, status: &PodStatus) -> DomainResult<()> {
        if let Some(event) = pod_event(project, status, self.clock.now()) {
            self.deliveries.append_event(&event).await?;
            self.signals.delivery_due();
        }
        Ok(())
    }
}
