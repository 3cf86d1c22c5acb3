//! Kubernetes failures in the adapter's own words, and their domain mapping.

use domain::DomainError;
use kube::client::UpgradeConnectionError;

/// What went wrong talking to Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeError {
    /// The pod does not exist (any more), or was replaced while a command ran in it.
    #[error("pod {0} is gone")]
    PodGone(String),
    /// The container was OOM-killed.
    #[error("pod {0} was OOM-killed")]
    OomKilled(String),
    /// The pod exists but cannot run commands now.
    #[error("pod {pod} is not ready: {reason}")]
    NotReady {
        /// The pod's name.
        pod: String,
        /// Its phase and why it is not ready.
        reason: String,
    },
    /// The API server cannot be reached, timed out, or answered 5xx/429.
    #[error("kubernetes API unavailable: {0}")]
    ApiUnavailable(String),
    /// The API server refused the credentials or the RBAC role (401, 403).
    #[error("kubernetes API refused access: {0}")]
    Forbidden(String),
    /// The object exists already (409).
    #[error("kubernetes API conflict: {0}")]
    Conflict(String),
    /// The object does not exist (404).
    #[error("not found: {0}")]
    NotFound(String),
    /// Any other refusal or unexpected answer.
    #[error("kubernetes API error ({code}): {message}")]
    Api {
        /// HTTP status code (0 when none applied).
        code: u16,
        /// What the server or client said.
        message: String,
    },
    /// The kubeconfig or in-cluster configuration could not be loaded.
    #[error("kubernetes configuration: {0}")]
    Config(String),
}

impl KubeError {
    /// Maps a kube-rs error: connection trouble, timeouts, 5xx and 429 are `ApiUnavailable`.
    pub fn from_kube(error: kube::Error) -> Self {
        match error {
            kube::Error::Api(status) => Self::from_code(status.code, format!("{}: {}", status.reason, status.message)),
            kube::Error::UpgradeConnection(UpgradeConnectionError::ProtocolSwitch(code)) => {
                Self::from_code(code.as_u16(), format!("exec upgrade answered {code}"))
            }
            kube::Error::UpgradeConnection(e) => Self::ApiUnavailable(format!("exec upgrade failed: {e}")),
            kube::Error::HyperError(e) => Self::ApiUnavailable(e.to_string()),
            kube::Error::Service(e) => Self::ApiUnavailable(e.to_string()),
            kube::Error::ReadEvents(e) => Self::ApiUnavailable(e.to_string()),
            kube::Error::Auth(e) => Self::Forbidden(e.to_string()),
            kube::Error::InferConfig(e) => Self::Config(e.to_string()),
            kube::Error::InferKubeconfig(e) => Self::Config(e.to_string()),
            other => Self::Api { code: 0, message: other.to_string() },
        }
    }

    /// Maps an HTTP status code the API server answered with.
    pub fn from_code(code: u16, message: String) -> Self {
        match code {
            401 | 403 => Self::Forbidden(message),
            404 => Self::NotFound(message),
            409 => Self::Conflict(message),
            429 | 500..=599 => Self::ApiUnavailable(message),
            _ => Self::Api { code, message },
        }
    }

    /// The error for an API call that did not answer within `after`.
    pub fn timed_out(what: &str, after: std::time::Duration) -> Self {
        Self::ApiUnavailable(format!("{what} did not answer within {after:?}"))
    }
}

impl From<KubeError> for DomainError {
    fn from(error: KubeError) -> Self {
        match error {
            KubeError::PodGone(_) | KubeError::NotFound(_) => Self::NotFound(error.to_string()),
            KubeError::NotReady { .. } | KubeError::Conflict(_) | KubeError::OomKilled(_) => {
                Self::Conflict(error.to_string())
            }
            // A backend the service cannot use, whatever the reason, is an outage to callers
            // (readiness, the circuit breaker); the text keeps the reason for the logs.
            KubeError::ApiUnavailable(_) | KubeError::Forbidden(_) | KubeError::Config(_) => {
                Self::Unavailable(error.to_string())
            }
            KubeError::Api { .. } => Self::Internal(error.to_string()),
        }
    }
}

/// Runs one API call under `limit`; a call still pending then counts as the API being unavailable.
pub(crate) async fn bounded<T>(
    what: &str,
    limit: std::time::Duration,
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, KubeError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map_err(KubeError::from_kube),
        Err(_) => Err(KubeError::timed_out(what, limit)),
    }
}

/// An exec stream that did not open, and whether that proves nothing was started in the pod.
#[derive(Debug)]
pub(crate) struct OpenFailed {
    /// The failure in the adapter's words.
    pub error: KubeError,
    /// True when the API answered before the upgrade (any 4xx/5xx) or no connection to it could
    /// be made: the exec request never reached a kubelet. False for a timeout or a connection
    /// lost after the request was sent, when the command may have started.
    pub nothing_started: bool,
}

/// Opens an exec stream under `limit`, like [`bounded`], but tells a failure that provably
/// started nothing from one that may have.
pub(crate) async fn bounded_open<T>(
    what: &str,
    limit: std::time::Duration,
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, OpenFailed> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(opened)) => Ok(opened),
        Ok(Err(e)) => {
            let nothing_started = refused_before_sending(&e);
            Err(OpenFailed { error: KubeError::from_kube(e), nothing_started })
        }
        Err(_) => Err(OpenFailed { error: KubeError::timed_out(what, limit), nothing_started: false }),
    }
}

/// Whether `error` proves the request never reached past the API server: an HTTP answer other
/// than the upgrade, or a failure to connect at all.
fn refused_before_sending(error: &kube::Error) -> bool {
    if matches!(error, kube::Error::Api(_) | kube::Error::UpgradeConnection(UpgradeConnectionError::ProtocolSwitch(_)))
    {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(hyper_util::client::legacy::Error::is_connect)
            || e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_unavailable_and_refusals_are_not() {
        assert!(matches!(KubeError::from_code(503, "x".into()), KubeError::ApiUnavailable(_)));
        assert!(matches!(KubeError::from_code(429, "x".into()), KubeError::ApiUnavailable(_)));
        assert!(matches!(KubeError::from_code(404, "x".into()), KubeError::NotFound(_)));
        assert!(matches!(KubeError::from_code(409, "x".into()), KubeError::Conflict(_)));
        assert!(matches!(KubeError::from_code(422, "x".into()), KubeError::Api { code: 422, .. }));
        let domain: DomainError = KubeError::ApiUnavailable("down".into()).into();
        assert!(matches!(domain, DomainError::Unavailable(_)));
        let domain: DomainError = KubeError::Forbidden("rbac".into()).into();
        assert!(matches!(domain, DomainError::Unavailable(_)));
    }

    #[test]
    fn api_status_errors_keep_their_code() {
        let status = kube::core::Status::failure("pods \"x\" not found", "NotFound").with_code(404);
        assert!(matches!(KubeError::from_kube(kube::Error::Api(status.boxed())), KubeError::NotFound(_)));
    }
}
