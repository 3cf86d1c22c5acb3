//! Who is acting, and what they may do: scopes and project visibility in one place.

use domain::api_key::{ApiKey, Powers, ProjectAccess, Scope, ScopeSet};
use domain::ids::ApiKeyId;
use domain::network::CidrList;
use domain::project::ProjectName;
use domain::{DomainError, DomainResult, Timestamp};

/// The actor of a use case: an API key's rights, or the system itself (CLI, worker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The acting key, `None` for the system.
    pub key_id: Option<ApiKeyId>,
    /// What it may do.
    pub scopes: ScopeSet,
    /// Which projects it may see.
    pub projects: ProjectAccess,
    /// Networks it may be used from (empty: anywhere).
    pub allowed_ips: CidrList,
    /// When it expires (`None`: never).
    pub expires_at: Option<Timestamp>,
}

impl Principal {
    /// The system: every scope, every project.
    pub fn system() -> Self {
        Self {
            key_id: None,
            scopes: admin_scopes(),
            projects: ProjectAccess::All,
            allowed_ips: CidrList::default(),
            expires_at: None,
        }
    }

    /// The rights of an authenticated key.
    pub fn of(key: &ApiKey) -> Self {
        Self {
            key_id: Some(key.id),
            scopes: key.scopes.clone(),
            projects: key.projects.clone(),
            allowed_ips: key.allowed_ips.clone(),
            expires_at: key.expires_at,
        }
    }

    /// The principal's powers on every axis that ranks keys.
    pub fn powers(&self) -> Powers {
        Powers {
            scopes: self.scopes.clone(),
            projects: self.projects.clone(),
            allowed_ips: self.allowed_ips.clone(),
            expires_at: self.expires_at,
        }
    }

    /// `Forbidden`, naming the axis, unless `powers` are no wider than the principal's own:
    /// no key may create or manage a key more powerful than itself.
    pub fn may_grant(&self, powers: &Powers) -> DomainResult<()> {
        match self.powers().first_exceeded_by(powers) {
            None => Ok(()),
            Some(axis) => Err(DomainError::Forbidden(format!(
                "the key would be more powerful than this one in {}: a key may only create or manage keys within its own {}",
                axis.field(),
                axis.field()
            ))),
        }
    }

    /// `NotFound` unless `key` lies wholly inside the principal's projects: a
    /// project-limited admin neither sees nor manages keys beyond them.
    pub fn see_key(&self, key: &ApiKey) -> DomainResult<()> {
        if self.projects.covers(&key.projects) {
            Ok(())
        } else {
            Err(DomainError::NotFound("API key".into()))
        }
    }

    /// `Forbidden` unless the scope is granted.
    pub fn require(&self, scope: Scope) -> DomainResult<()> {
        if self.scopes.grants(scope) {
            Ok(())
        } else {
            Err(DomainError::Forbidden(format!("this API key lacks the {scope} scope")))
        }
    }

    /// `NotFound` (not `Forbidden`: no existence leak) unless the project is visible.
    pub fn see(&self, project: &ProjectName) -> DomainResult<()> {
        if self.projects.allows(project) {
            Ok(())
        } else {
            Err(DomainError::NotFound("project".into()))
        }
    }
}

fn admin_scopes() -> ScopeSet {
    // A one-element set is never empty.
    ScopeSet::new([Scope::Admin]).unwrap_or_else(|_| unreachable!("non-empty scope set"))
}
