//! Standard Webhooks signatures, made by the spec's reference crate (`standardwebhooks`).

use domain::webhook::WebhookSecret;

/// Why a request could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("cannot sign the webhook: {0}")]
pub struct SigningError(String);

/// The `webhook-signature` value for `payload` sent as `message_id` at `timestamp` (Unix
/// seconds): `v1,<base64 HMAC-SHA256 of "id.timestamp.payload">` per secret, space-separated,
/// current secret first (receivers accept a message when any signature matches).
pub fn signature_header(
    secrets: &[WebhookSecret],
    message_id: &str,
    timestamp: i64,
    payload: &str,
) -> Result<String, SigningError> {
    if secrets.is_empty() {
        return Err(SigningError("no signing secret".into()));
    }
    let signatures = secrets
        .iter()
        .map(|secret| {
            let signer = standardwebhooks::Webhook::new(secret.expose()).map_err(|e| SigningError(e.to_string()))?;
            signer.sign(message_id, timestamp, payload.as_bytes()).map_err(|e| SigningError(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(signatures.join(" "))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    /// An HMAC written from the spec's text, independent of the crate that signs.
    fn spec_signature(secret: &WebhookSecret, id: &str, ts: i64, body: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&secret.key()).unwrap();
        mac.update(format!("{id}.{ts}.{body}").as_bytes());
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn matches_the_spec_example() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = r#"{"test": 2432232314}"#;
        let header = signature_header(&[secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body).unwrap();
        assert_eq!(header, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn signs_with_every_secret_in_order() {
        let new = WebhookSecret::from_key(&[1; 32]).unwrap();
        let old = WebhookSecret::from_key(&[2; 24]).unwrap();
        let header = signature_header(&[new.clone(), old.clone()], "id", 1_700_000_000, "{}").unwrap();
        let expected = format!(
            "{} {}",
            spec_signature(&new, "id", 1_700_000_000, "{}"),
            spec_signature(&old, "id", 1_700_000_000, "{}")
        );
        assert_eq!(header, expected);
        assert!(signature_header(&[], "id", 1, "{}").is_err());
    }
}
