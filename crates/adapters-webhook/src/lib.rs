//! rdev-api's outbound webhooks over HTTP: the `WebhookSender` port with reqwest (rustls),
//! Standard Webhooks signatures made by the reference `standardwebhooks` crate, no redirects,
//! connect and total timeouts, bounded answer reads, and an SSRF guard that refuses private,
//! loopback, link-local and metadata addresses at creation and at every connection.

mod sender;
mod signing;
pub mod ssrf;
#[cfg(feature = "testing")]
pub mod testing;

pub use sender::{parse_retry_after, BuildError, HttpWebhookSender, SenderConfig};
pub use signing::{signature_header, SigningError};
