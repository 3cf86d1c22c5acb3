//! Who is acting, and what they may do: scopes and project visibility in one place.

use domain::api_key::{ApiKey, ProjectAccess, Scope, ScopeSet};
use domain::ids::ApiKeyId;
use domain::project::ProjectName;
use domain::{DomainError, DomainResult};

/// The actor of a use case: an API key's rights, or the system itself (CLI, worker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The acting key, `None` for the system.
    pub key_id: Option<ApiKeyId>,
    /// What it may do.
    pub scopes: ScopeSet,
    /// Which projects it may see.
    pub projects: ProjectAccess,
}

impl Principal {
    /// The system: every scope, every project.
    pub fn system() -> Self {
        Self { key_id: None, scopes: admin_scopes(), projects: ProjectAccess::All }
    }

    /// The rights of an authenticated key.
    pub fn of(key: &ApiKey) -> Self {
        Self { key_id: Some(key.id), scopes: key.scopes.clone(), projects: key.projects.clone() }
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
