//! Standard Webhooks signing secrets and signatures.
//!
//! A secret is `whsec_` followed by the standard base64 of
//! [`SECRET_BYTES`] random bytes from the operating system's generator
//! ([`new_secret`]). A delivery carries three headers:
//!
//! * `webhook-id`: the delivery's id, the same on every attempt;
//! * `webhook-timestamp`: the attempt's time in Unix seconds;
//! * `webhook-signature`: `v1,` and the standard base64 of
//!   HMAC-SHA256(key, `"{id}.{timestamp}.{body}"`), where the key is the
//!   base64-decoded part of the secret after `whsec_` ([`sign`]).
//!
//! A receiver verifies by recomputing the HMAC over the body bytes it got
//! and comparing in constant time, and refuses timestamps far from its own
//! clock (replays).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use crate::AlertsError;

/// Random bytes of a signing key.
pub const SECRET_BYTES: usize = 32;
/// Prefix of a signing secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Header: the delivery's stable id.
pub const HEADER_ID: &str = "webhook-id";
/// Header: the attempt's Unix time in seconds.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Header: `v1,<base64 signature>`.
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// A fresh signing secret, `whsec_<base64 of 32 random bytes>`.
pub fn new_secret() -> SecretString {
    let mut key = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut key);
    let s = format!("{SECRET_PREFIX}{}", STANDARD.encode(key));
    key.fill(0);
    SecretString::from(s)
}

/// The HMAC key of a secret (the bytes after `whsec_`, base64-decoded).
pub fn signing_key(secret: &SecretString) -> Result<Vec<u8>, AlertsError> {
    let text = secret.expose_secret();
    let body = text
        .strip_prefix(SECRET_PREFIX)
        .ok_or(AlertsError::SecretMalformed)?;
    let key = STANDARD
        .decode(body)
        .map_err(|_| AlertsError::SecretMalformed)?;
    if key.is_empty() {
        return Err(AlertsError::SecretMalformed);
    }
    Ok(key)
}

/// The `webhook-signature` value of one attempt.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_well_formed_and_distinct() {
        let a = new_secret();
        let b = new_secret();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(a.expose_secret().starts_with("whsec_"));
        assert_eq!(signing_key(&a).unwrap().len(), SECRET_BYTES);
        assert!(!format!("{a:?}").contains(&a.expose_secret()[6..]));
    }

    #[test]
    fn malformed_secrets_are_refused() {
        for s in ["", "whsec_", "whsec_!!!", "sk_abc"] {
            let e = signing_key(&SecretString::from(s.to_owned())).unwrap_err();
            assert_eq!(e.code(), "webhook_secret_malformed", "{s:?}");
        }
    }

    /// The example of the Standard Webhooks specification's reference
    /// libraries (secret, id, timestamp, payload → signature).
    #[test]
    fn matches_the_specification_example() {
        let secret = SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned());
        let key = signing_key(&secret).unwrap();
        let sig = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
