//! `ApiKeyService`: issue, authenticate, revoke and rotate API keys.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use domain::api_key::{ApiKey, ApiKeySecret, KeyRejection, Powers, PreviousSecret, ProjectAccess, Scope, ScopeSet};
use domain::ids::ApiKeyId;
use domain::network::CidrList;
use domain::pagination::{Page, PageRequest};
use domain::ports::{ApiKeyRepository, Clock};
use domain::{DomainError, DomainResult, Timestamp};
use moka::future::Cache;
use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::access::Principal;
use crate::signalling::Signals;

/// How often `last_used_at` is written for one key at most.
const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// Longest rotation grace period: a week.
pub const MAX_GRACE_SECONDS: u64 = 7 * 24 * 3600;

/// What a new key may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    /// Human name.
    pub name: String,
    /// Permissions.
    pub scopes: ScopeSet,
    /// Visible projects.
    pub projects: ProjectAccess,
    /// Allowed client networks (empty: any).
    pub allowed_ips: CidrList,
    /// Per-key rate limit.
    pub rate_limit_rps: Option<u32>,
    /// Expiry.
    pub expires_at: Option<Timestamp>,
}

impl NewKey {
    /// The powers the new key would have.
    pub fn powers(&self) -> Powers {
        Powers {
            scopes: self.scopes.clone(),
            projects: self.projects.clone(),
            allowed_ips: self.allowed_ips.clone(),
            expires_at: self.expires_at,
        }
    }
}

/// A refused authentication: the error to answer with, and the key the presented secret
/// belongs to, when it belongs to one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// `Unauthorized`, `Forbidden` (wrong address), or a store error (not the caller's fault).
    pub error: DomainError,
    /// The key whose (current or former) secret was presented.
    pub key: Option<ApiKeyId>,
}

/// Issues, authenticates, revokes and rotates keys.
pub struct ApiKeyService {
    repo: Arc<dyn ApiKeyRepository>,
    clock: Arc<dyn Clock>,
    recently_touched: Cache<ApiKeyId, ()>,
    signals: Option<Arc<Signals>>,
}

impl std::fmt::Debug for ApiKeyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyService").finish_non_exhaustive()
    }
}

fn generate_secret() -> ApiKeySecret {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    ApiKeySecret::from_random_bytes(bytes)
}

impl ApiKeyService {
    /// A service over `repo` (typically a `CachedRepository`).
    pub fn new(repo: Arc<dyn ApiKeyRepository>, clock: Arc<dyn Clock>) -> Self {
        let recently_touched = Cache::builder().max_capacity(100_000).time_to_live(TOUCH_EVERY).build();
        Self { repo, clock, recently_touched, signals: None }
    }

    /// Announces revocations and rotations on `signals`, so every replica drops the key from
    /// its cache at once instead of at the TTL.
    pub fn with_signals(mut self, signals: Arc<Signals>) -> Self {
        self.signals = Some(signals);
        self
    }

    async fn announce(&self, id: ApiKeyId) {
        if let Some(signals) = &self.signals {
            signals.key_changed(id).await;
        }
    }

    /// Creates a key and returns it with its secret (shown once). Needs `admin`.
    pub async fn create(&self, actor: &Principal, new: NewKey) -> DomainResult<(ApiKey, ApiKeySecret)> {
        actor.require(Scope::Admin)?;
        validate_new(&new, self.clock.now())?;
        actor.may_grant(&new.powers())?;
        let secret = generate_secret();
        let key = ApiKey {
            id: ApiKeyId::generate(),
            name: new.name,
            prefix: secret.display_prefix(),
            hash: secret.hash(),
            previous: None,
            scopes: new.scopes,
            projects: new.projects,
            allowed_ips: new.allowed_ips,
            rate_limit_rps: new.rate_limit_rps,
            expires_at: new.expires_at,
            created_at: self.clock.now(),
            revoked_at: None,
            last_used_at: None,
        };
        self.repo.create(&key).await?;
        tracing::info!(api_key_id = %key.id, name = %key.name, "API key created");
        Ok((key, secret))
    }

    /// Creates an `admin` key when the store has none yet (first start).
    pub async fn bootstrap_admin(&self) -> DomainResult<Option<(ApiKey, ApiKeySecret)>> {
        if self.repo.count().await? > 0 {
            return Ok(None);
        }
        let new = NewKey {
            name: "bootstrap-admin".into(),
            scopes: ScopeSet::new([Scope::Admin])?,
            projects: ProjectAccess::All,
            allowed_ips: CidrList::default(),
            rate_limit_rps: None,
            expires_at: None,
        };
        self.create(&Principal::system(), new).await.map(Some)
    }

    /// Authenticates a presented `Authorization: Bearer` value from `client_ip`.
    /// `Unauthorized` for unknown, malformed, revoked or expired keys; `Forbidden` from a
    /// network outside the key's `allowed_ips`.
    pub async fn authenticate(&self, presented: &str, client_ip: IpAddr) -> DomainResult<ApiKey> {
        self.authenticate_traced(presented, client_ip).await.map_err(|d| d.error)
    }

    /// As [`Self::authenticate`], but a refusal also names the key when the presented secret
    /// belongs to one (revoked, expired, a rotated-out secret past its grace, a wrong address),
    /// so that the audit can say whose stolen or stale key was tried.
    pub async fn authenticate_traced(&self, presented: &str, client_ip: IpAddr) -> Result<ApiKey, Denial> {
        let unknown = || Denial { error: rejection(KeyRejection::Unknown), key: None };
        let secret = ApiKeySecret::parse(presented).map_err(|error| Denial { error, key: None })?;
        let hash = secret.hash();
        let key =
            self.repo.find_by_hash(&hash).await.map_err(|error| Denial { error, key: None })?.ok_or_else(unknown)?;
        // The store matched by hash already; compare again in constant time so nothing on this
        // path branches early on secret-derived bytes.
        let matches_current: bool = key.hash.as_bytes().ct_eq(hash.as_bytes()).into();
        let matches_previous = key.previous.is_some_and(|p| bool::from(p.hash.as_bytes().ct_eq(hash.as_bytes())));
        if !matches_current && !matches_previous {
            return Err(unknown());
        }
        let now = self.clock.now();
        key.check(&hash, now, client_ip).map_err(|r| Denial { error: rejection(r), key: Some(key.id) })?;
        self.touch(&key, now).await;
        Ok(key)
    }

    /// Records the key's use at most once per `TOUCH_EVERY`, written by its own task so no
    /// request waits on the write.
    async fn touch(&self, key: &ApiKey, now: Timestamp) {
        if self.recently_touched.contains_key(&key.id) {
            return;
        }
        self.recently_touched.insert(key.id, ()).await;
        let (repo, id) = (Arc::clone(&self.repo), key.id);
        tokio::spawn(async move {
            if let Err(e) = repo.touch(id, now).await {
                tracing::warn!(api_key_id = %id, error = %e, "could not record key use");
            }
        });
    }

    /// One key. Needs `admin`; a project-limited admin sees only keys within its projects.
    pub async fn get(&self, actor: &Principal, id: ApiKeyId) -> DomainResult<ApiKey> {
        actor.require(Scope::Admin)?;
        let key = self.repo.get(id).await?;
        actor.see_key(&key)?;
        Ok(key)
    }

    /// Keys, paged. Needs `admin`; a project-limited admin sees only keys within its projects
    /// (so one of its pages may hold fewer than `limit` keys; `next_cursor` still continues).
    pub async fn list(&self, actor: &Principal, page: PageRequest) -> DomainResult<Page<ApiKey>> {
        actor.require(Scope::Admin)?;
        let mut page = self.repo.list(page).await?;
        page.items.retain(|key| actor.see_key(key).is_ok());
        Ok(page)
    }

    /// The key `id` if `actor` may manage it: visible, and no more powerful than the actor.
    async fn manageable(&self, actor: &Principal, id: ApiKeyId) -> DomainResult<ApiKey> {
        let key = self.get(actor, id).await?;
        actor.may_grant(&key.powers())?;
        Ok(key)
    }

    /// Revokes a key for good. Needs `admin`, and power over the key.
    pub async fn revoke(&self, actor: &Principal, id: ApiKeyId) -> DomainResult<ApiKey> {
        actor.require(Scope::Admin)?;
        self.manageable(actor, id).await?;
        let key = self.repo.revoke(id, self.clock.now()).await?;
        tracing::info!(api_key_id = %id, "API key revoked");
        self.announce(id).await;
        Ok(key)
    }

    /// Replaces a key's secret; the old one keeps working for `grace_seconds`. Needs `admin`.
    pub async fn rotate(
        &self,
        actor: &Principal,
        id: ApiKeyId,
        grace_seconds: u64,
    ) -> DomainResult<(ApiKey, ApiKeySecret)> {
        actor.require(Scope::Admin)?;
        if grace_seconds > MAX_GRACE_SECONDS {
            return Err(DomainError::invalid("grace_seconds", "must be between 0 and 604800 (one week)"));
        }
        let current = self.manageable(actor, id).await?;
        let secret = generate_secret();
        let previous = (grace_seconds > 0).then(|| PreviousSecret {
            hash: current.hash,
            valid_until: self.clock.now() + chrono::TimeDelta::seconds(grace_seconds as i64),
        });
        let key = self.repo.rotate(id, secret.hash(), &secret.display_prefix(), previous).await?;
        tracing::info!(api_key_id = %id, grace_seconds, "API key rotated");
        self.announce(id).await;
        Ok((key, secret))
    }
}

fn validate_new(new: &NewKey, now: Timestamp) -> DomainResult<()> {
    let mut errors = Vec::new();
    if new.name.trim().is_empty() || new.name.len() > 200 {
        errors.push(domain::FieldError::new("name", "must be 1 to 200 characters"));
    }
    if new.rate_limit_rps.is_some_and(|r| r == 0 || r > 100_000) {
        errors.push(domain::FieldError::new("rate_limit_rps", "must be between 1 and 100000"));
    }
    if new.expires_at.is_some_and(|e| e <= now) {
        errors.push(domain::FieldError::new("expires_at", "must be in the future"));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(DomainError::Invalid(errors))
    }
}

fn rejection(r: KeyRejection) -> DomainError {
    match r {
        KeyRejection::Unknown => DomainError::Unauthorized("unknown API key".into()),
        KeyRejection::Revoked => DomainError::Unauthorized("API key revoked".into()),
        KeyRejection::Expired => DomainError::Unauthorized("API key expired".into()),
        KeyRejection::IpNotAllowed => DomainError::Forbidden("this API key may not be used from this address".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::testing::{ManualClock, MemoryStore};

    fn service() -> (ApiKeyService, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::at_fixed_start());
        (ApiKeyService::new(Arc::new(MemoryStore::new()), clock.clone()), clock)
    }

    fn new_key(allowed: &[&str]) -> NewKey {
        NewKey {
            name: "ci".into(),
            scopes: ScopeSet::new([Scope::CommandsRead]).expect("scopes"),
            projects: ProjectAccess::All,
            allowed_ips: CidrList::parse(allowed).expect("cidrs"),
            rate_limit_rps: None,
            expires_at: None,
        }
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn a_created_key_authenticates_until_revoked() {
        let (svc, _) = service();
        let (key, secret) = svc.create(&Principal::system(), new_key(&[])).await.expect("create");
        assert_eq!(svc.authenticate(secret.expose(), LOCAL).await.map(|k| k.id), Ok(key.id));
        svc.revoke(&Principal::system(), key.id).await.expect("revoke");
        assert!(matches!(svc.authenticate(secret.expose(), LOCAL).await, Err(DomainError::Unauthorized(_))));
    }

    #[tokio::test]
    async fn a_refused_known_key_is_named_and_an_unknown_one_is_not() {
        let (svc, _) = service();
        let (key, secret) = svc.create(&Principal::system(), new_key(&["10.0.0.0/8"])).await.expect("create");
        let denial = svc.authenticate_traced(secret.expose(), LOCAL).await.expect_err("wrong address");
        assert_eq!(denial.key, Some(key.id));
        assert!(matches!(denial.error, DomainError::Forbidden(_)));
        svc.revoke(&Principal::system(), key.id).await.expect("revoke");
        let ten = "10.1.1.1".parse().expect("ip");
        assert_eq!(svc.authenticate_traced(secret.expose(), ten).await.expect_err("revoked").key, Some(key.id));
        let other = generate_secret();
        assert_eq!(svc.authenticate_traced(other.expose(), ten).await.expect_err("unknown").key, None);
        assert_eq!(svc.authenticate_traced("rdev_garbage", ten).await.expect_err("malformed").key, None);
    }

    #[tokio::test]
    async fn allowed_ips_are_enforced() {
        let (svc, _) = service();
        let (_, secret) = svc.create(&Principal::system(), new_key(&["10.0.0.0/8"])).await.expect("create");
        assert!(matches!(svc.authenticate(secret.expose(), LOCAL).await, Err(DomainError::Forbidden(_))));
        assert!(svc.authenticate(secret.expose(), "10.2.3.4".parse().expect("ip")).await.is_ok());
    }

    #[tokio::test]
    async fn rotation_keeps_the_old_secret_for_the_grace_period_only() {
        let (svc, clock) = service();
        let (key, old) = svc.create(&Principal::system(), new_key(&[])).await.expect("create");
        let (_, new) = svc.rotate(&Principal::system(), key.id, 30).await.expect("rotate");
        assert!(svc.authenticate(new.expose(), LOCAL).await.is_ok());
        assert!(svc.authenticate(old.expose(), LOCAL).await.is_ok(), "old secret in grace");
        clock.advance(chrono::TimeDelta::seconds(31));
        assert!(svc.authenticate(old.expose(), LOCAL).await.is_err(), "old secret after grace");
        assert!(svc.authenticate(new.expose(), LOCAL).await.is_ok());
        let (_, newest) = svc.rotate(&Principal::system(), key.id, 0).await.expect("rotate");
        assert!(svc.authenticate(new.expose(), LOCAL).await.is_err(), "no grace: the old secret dies at once");
        assert!(svc.authenticate(newest.expose(), LOCAL).await.is_ok());
    }

    #[tokio::test]
    async fn expired_keys_are_refused() {
        let (svc, clock) = service();
        let mut new = new_key(&[]);
        new.expires_at = Some(clock.now() + chrono::TimeDelta::seconds(10));
        let (_, secret) = svc.create(&Principal::system(), new).await.expect("create");
        assert!(svc.authenticate(secret.expose(), LOCAL).await.is_ok());
        clock.advance(chrono::TimeDelta::seconds(10));
        assert!(matches!(svc.authenticate(secret.expose(), LOCAL).await, Err(DomainError::Unauthorized(_))));
    }

    #[tokio::test]
    async fn only_admins_manage_keys_and_bootstrap_happens_once() {
        let (svc, _) = service();
        assert!(svc.bootstrap_admin().await.expect("bootstrap").is_some());
        assert!(svc.bootstrap_admin().await.expect("bootstrap").is_none());
        let reader = Principal { scopes: ScopeSet::new([Scope::AuditRead]).expect("s"), ..Principal::system() };
        assert!(matches!(svc.create(&reader, new_key(&[])).await, Err(DomainError::Forbidden(_))));
        assert!(matches!(svc.authenticate("rdev_garbage", LOCAL).await, Err(DomainError::Unauthorized(_))));
    }
}
