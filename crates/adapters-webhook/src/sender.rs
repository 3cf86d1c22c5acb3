//! `HttpWebhookSender`: one signed POST per attempt with reqwest — no redirects, no proxies,
//! connect and total timeouts, at most `Attempt::MAX_SNIPPET_BYTES` of the answer read.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use domain::webhook::{
    truncate_snippet, Attempt, SendError, SendErrorKind, SendOutcome, WebhookRequest, WebhookSender, WebhookUrl,
};
use domain::{DomainError, DomainResult};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};

use crate::signing::signature_header;
use crate::ssrf::{self, GuardedResolver, TargetError};

/// How the sender behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderConfig {
    /// Total time for one attempt, answer included (15 s).
    pub timeout: Duration,
    /// Time to establish the connection (5 s).
    pub connect_timeout: Duration,
    /// `WEBHOOK_ALLOW_PRIVATE_TARGETS`: skip the SSRF guard (local development, tests).
    pub allow_private_targets: bool,
    /// The `User-Agent` header.
    pub user_agent: String,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            allow_private_targets: false,
            user_agent: format!("rdev-api-webhooks/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// Why the sender could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the webhook HTTP client: {0}")]
pub struct BuildError(#[from] reqwest::Error);

/// Sends webhooks over HTTP(S). Cheap to clone; connections are pooled per target.
#[derive(Debug, Clone)]
pub struct HttpWebhookSender {
    client: reqwest::Client,
    config: Arc<SenderConfig>,
}

impl HttpWebhookSender {
    /// A sender with `config`.
    ///
    /// # Errors
    /// When the TLS backend cannot be initialised.
    pub fn new(config: SenderConfig) -> Result<Self, BuildError> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would make the connection on our behalf, past the address checks.
            .no_proxy()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(config.user_agent.clone());
        if !config.allow_private_targets {
            builder = builder.dns_resolver(Arc::new(GuardedResolver));
        }
        Ok(Self { client: builder.build()?, config: Arc::new(config) })
    }

    /// The configuration in use.
    pub fn config(&self) -> &SenderConfig {
        &self.config
    }

    fn headers(&self, request: &WebhookRequest) -> Result<HeaderMap, SendError> {
        let other = |message: String| SendError { kind: SendErrorKind::Other, message };
        let timestamp = request.timestamp.timestamp();
        let signature = signature_header(&request.secrets, &request.message_id, timestamp, &request.payload)
            .map_err(|e| other(e.to_string()))?;
        let value = |v: &str| HeaderValue::from_str(v).map_err(|e| other(format!("invalid header value: {e}")));
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", value(&request.message_id)?);
        headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
        headers.insert("webhook-signature", value(&signature)?);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, value(&self.config.user_agent)?);
        if let Some(tp) = request.traceparent.as_deref().filter(|tp| is_traceparent(tp)) {
            headers.insert("traceparent", value(tp)?);
        }
        Ok(headers)
    }

    async fn post(&self, request: &WebhookRequest, started: Instant) -> Result<SendOutcome, SendError> {
        let url = request.url.to_url();
        if !self.config.allow_private_targets {
            // Names go through `GuardedResolver`; IP literals never reach a resolver.
            if let Some(ip) = ssrf::literal_ip(&url).filter(|ip| ssrf::is_forbidden(*ip)) {
                let host = url.host_str().unwrap_or_default().to_owned();
                return Err(refused(&TargetError::Forbidden { host, ip }));
            }
        }
        let headers = self.headers(request)?;
        let mut response =
            self.client.post(url).headers(headers).body(request.payload.clone()).send().await.map_err(classify)?;
        let status = response.status().as_u16();
        let retry_after = response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
        let mut body = Vec::new();
        // Only the head of the answer is kept; the rest is never read (the connection is dropped).
        while body.len() < Attempt::MAX_SNIPPET_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) if e.is_timeout() => return Err(classify(e)),
                // The status arrived; a broken body does not change what the receiver said.
                Err(_) => break,
            }
        }
        let text = String::from_utf8_lossy(&body);
        let snippet = Some(truncate_snippet(&text).to_owned()).filter(|s| !s.is_empty());
        Ok(SendOutcome { status: Some(status), latency: started.elapsed(), snippet, retry_after, error: None })
    }
}

fn refused(e: &TargetError) -> SendError {
    SendError { kind: SendErrorKind::RefusedTarget, message: e.to_string() }
}

/// Maps a reqwest error to what the attempt record says; never includes secrets (reqwest
/// errors name the URL, which holds none: credentials in URLs are refused).
fn classify(e: reqwest::Error) -> SendError {
    if let Some(target) = ssrf::target_error_in(&e) {
        return refused(&target);
    }
    let kind = if e.is_timeout() {
        SendErrorKind::Timeout
    } else if e.is_connect() {
        SendErrorKind::Connect
    } else {
        SendErrorKind::Other
    };
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message = format!("{message}: {s}");
        source = s.source();
    }
    SendError { kind, message }
}

/// A W3C `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`.
fn is_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    parts.len() == 4 && hex(parts[0], 2) && hex(parts[1], 32) && hex(parts[2], 16) && hex(parts[3], 2)
}

/// `Retry-After` as seconds or an HTTP date; a date in the past means "now".
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(seconds) = v.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

#[async_trait]
impl WebhookSender for HttpWebhookSender {
    async fn check_target(&self, url: &WebhookUrl) -> DomainResult<()> {
        if self.config.allow_private_targets {
            return Ok(());
        }
        ssrf::check_url(&url.to_url()).await.map_err(|e| DomainError::invalid("url", e.to_string()))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(webhook_id = %request.message_id))]
    async fn send(&self, request: &WebhookRequest) -> SendOutcome {
        let started = Instant::now();
        match self.post(request, started).await {
            Ok(outcome) => outcome,
            Err(error) => SendOutcome { latency: started.elapsed(), error: Some(error), ..SendOutcome::default() },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
        assert!(parse_retry_after(&later).is_some_and(|d| d > Duration::from_secs(3500)));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn only_well_formed_traceparents_are_forwarded() {
        assert!(is_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert!(!is_traceparent("00-xyz-00f067aa0ba902b7-01"));
        assert!(!is_traceparent("garbage\r\nx: y"));
    }
}
