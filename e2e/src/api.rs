//! The HTTP client side: what a user of rdev-api sends, with an admin key.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A client with the admin key; every call names the replica (`base`) it goes to.
#[derive(Debug, Clone)]
pub struct Api {
    client: reqwest::Client,
    key: String,
}

/// An answer: status and JSON body (`Null` when the body is not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body.
    pub body: Value,
}

impl Api {
    /// A client for `key`; requests give up after `timeout` (a stopped replica never answers).
    pub fn new(key: &str, timeout: Duration) -> Api {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(2))
            .no_proxy()
            .pool_max_idle_per_host(64)
            .build()
            .expect("HTTP client");
        Api { client, key: key.to_owned() }
    }

    /// The admin key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The underlying client (for streams).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// One request; `Err` when no answer came (refused, reset, timed out).
    ///
    /// # Errors
    /// The transport error, as text.
    pub async fn call(
        &self,
        method: Method,
        base: &str,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Answer, String> {
        let mut req = self.client.request(method, format!("{base}{path}")).bearer_auth(&self.key);
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        let res = req.send().await.map_err(|e| e.to_string())?;
        let status = res.status();
        let text = res.text().await.map_err(|e| e.to_string())?;
        Ok(Answer { status, body: serde_json::from_str(&text).unwrap_or(Value::Null) })
    }

    /// GET that must answer 200.
    ///
    /// # Panics
    /// Otherwise.
    pub async fn get_ok(&self, base: &str, path: &str) -> Value {
        let a = self.call(Method::GET, base, path, None, None).await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(a.status, StatusCode::OK, "GET {base}{path}: {}", a.body);
        a.body
    }

    /// Creates a project whose commands may run `cap` at a time.
    ///
    /// # Panics
    /// Unless it answers 201.
    pub async fn create_project(&self, base: &str, name: &str, cap: u32) {
        let body = json!({"name": name, "image": "alpine:3.20", "max_concurrent_commands": cap});
        let a = self.call(Method::POST, base, "/v1/projects", Some(&body), None).await.expect("create project");
        assert_eq!(a.status, StatusCode::CREATED, "create project {name}: {}", a.body);
    }

    /// Subscribes `url` to every `command.*` event; returns the subscription.
    ///
    /// # Panics
    /// Unless it answers 201.
    pub async fn subscribe_commands(&self, base: &str, url: &str) -> Value {
        let events = [
            "command.queued",
            "command.started",
            "command.succeeded",
            "command.failed",
            "command.timed_out",
            "command.cancelled",
            "command.lost",
        ];
        let body = json!({"url": url, "events": events});
        let a = self.call(Method::POST, base, "/v1/webhooks", Some(&body), None).await.expect("create webhook");
        assert_eq!(a.status, StatusCode::CREATED, "create webhook: {}", a.body);
        a.body
    }

    /// Submits a command once; the answer whatever it is.
    ///
    /// # Errors
    /// When no answer came.
    pub async fn submit(&self, base: &str, project: &str, body: &Value, idem: Option<&str>) -> Result<Answer, String> {
        self.call(Method::POST, base, &format!("/v1/projects/{project}/commands"), Some(body), idem).await
    }

    /// Submits and asserts `202`; returns the command.
    ///
    /// # Panics
    /// Otherwise.
    pub async fn submit_ok(&self, base: &str, project: &str, body: Value) -> Value {
        let a = self.submit(base, project, &body, None).await.unwrap_or_else(|e| panic!("submit: {e}"));
        assert_eq!(a.status, StatusCode::ACCEPTED, "submit: {}", a.body);
        a.body
    }

    /// The command `id`.
    pub async fn command(&self, base: &str, id: &str) -> Value {
        self.get_ok(base, &format!("/v1/commands/{id}")).await
    }

    /// Every command of `project`, all pages.
    pub async fn all_commands(&self, base: &str, project: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        // Bounded: 10 000 pages of 200 is far beyond any run.
        for _ in 0..10_000 {
            let path = match &cursor {
                Some(c) => format!("/v1/projects/{project}/commands?limit=200&cursor={c}"),
                None => format!("/v1/projects/{project}/commands?limit=200"),
            };
            let page = self.get_ok(base, &path).await;
            all.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return all,
            }
        }
        panic!("more than 10 000 pages of commands in {project}");
    }

    /// Queued (all priorities) and running commands, from `GET /v1/queue`.
    ///
    /// # Errors
    /// When the replica does not answer 200.
    pub async fn queue_depth(&self, base: &str) -> Result<(u64, u64), String> {
        let a = self.call(Method::GET, base, "/v1/queue", None, None).await?;
        if a.status != StatusCode::OK {
            return Err(format!("{}: {}", a.status, a.body));
        }
        let depth = a.body["depth"].as_object().map_or(0, |d| d.values().filter_map(Value::as_u64).sum());
        Ok((depth, a.body["running"].as_u64().unwrap_or(0)))
    }

    /// Waits up to `secs` for the command to leave `queued`/`running`; `None` if it did not.
    pub async fn finished_within(&self, base: &str, id: &str, secs: f64) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
        loop {
            if let Ok(a) = self.call(Method::GET, base, &format!("/v1/commands/{id}"), None, None).await {
                if a.status == StatusCode::OK && !matches!(a.body["status"].as_str(), Some("queued" | "running")) {
                    return Some(a.body);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The command's Server-Sent Events from the start, as (event, data) pairs, read until the
    /// server ends the stream or `within` passes (then `complete` is false).
    pub async fn events(&self, base: &str, id: &str, within: Duration) -> (Vec<(String, Value)>, bool) {
        let req = self.client.get(format!("{base}/v1/commands/{id}/events")).bearer_auth(&self.key);
        let read = async {
            let res = req.send().await.map_err(|e| e.to_string())?;
            res.text().await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(within, read).await {
            Ok(Ok(text)) => (parse_sse(&text), true),
            Ok(Err(_)) | Err(_) => (Vec::new(), false),
        }
    }
}

/// (event, data) of each event in an SSE text.
pub fn parse_sse(text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut event = String::from("message");
        let mut data = String::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
        if !data.is_empty() {
            out.push((event, serde_json::from_str(&data).unwrap_or(Value::String(data))));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_blocks_become_events() {
        let text = "id: 1\nevent: status\ndata: {\"status\":\"lost\"}\n\n: keepalive\n\nid: 2\nevent: exit\ndata: {\"id\":\"x\"}\n\n";
        let events = parse_sse(text);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].0, "status");
        assert_eq!(events[0].1["status"], "lost");
        assert_eq!(events[1].0, "exit");
    }
}
