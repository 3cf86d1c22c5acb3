//! The webhook receiver: a loopback endpoint that can be switched to answer 500, and its
//! deliveries de-duplicated by `webhook-id` (a retry or a resend after a lost lease carries
//! the same id; only answers in 2xx count as delivered).

use std::collections::BTreeMap;

use adapters_webhook::testing::{Receiver, Reply};
use serde_json::Value;

/// One delivery that was answered 2xx at least once.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The payload: `{"type","timestamp","data"}`.
    pub body: Value,
    /// How many requests with this `webhook-id` were answered 2xx (more than one is a duplicate
    /// the receiver absorbed).
    pub times: u32,
}

/// The receiver.
#[derive(Debug)]
pub struct Hooks {
    receiver: Receiver,
}

impl Hooks {
    /// A receiver on 127.0.0.1 answering 204.
    pub async fn start() -> Hooks {
        Hooks { receiver: Receiver::start().await.expect("webhook receiver on loopback") }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        self.receiver.url("/hooks")
    }

    /// From now on answer `500` (`true`) or `204` (`false`).
    pub fn fail(&self, failing: bool) {
        self.receiver.set_default(if failing { Reply::status(500) } else { Reply::status(204) });
    }

    /// Every request so far (answered anyhow).
    pub fn requests(&self) -> usize {
        self.receiver.count()
    }

    /// Deliveries answered 2xx, by `webhook-id`.
    pub fn delivered(&self) -> BTreeMap<String, Delivered> {
        let mut out: BTreeMap<String, Delivered> = BTreeMap::new();
        for r in self.receiver.received() {
            if !r.answered.is_some_and(|c| (200..300).contains(&c)) {
                continue;
            }
            let Some(id) = r.header("webhook-id").map(str::to_owned) else { continue };
            let body: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
            out.entry(id).and_modify(|d| d.times += 1).or_insert(Delivered { body, times: 1 });
        }
        out
    }

    /// Delivered command events: command id → event types (each delivery once).
    pub fn command_events(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for d in self.delivered().values() {
            if let (Some(kind), Some(id)) = (d.body["type"].as_str(), d.body["data"]["id"].as_str()) {
                out.entry(id.to_owned()).or_default().push(kind.to_owned());
            }
        }
        out
    }
}
