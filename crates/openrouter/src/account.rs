//! The key's own account: `GET /key` (label, limit, usage) and the OAuth
//! PKCE code exchange `POST /auth/keys`.
//!
//! # Decisions
//!
//! * **Amounts are read exactly** from the JSON numbers' text
//!   ([`tally_money::json_number`]); a reply whose amounts cannot be read
//!   exactly is [`OpenRouterError::Malformed`].
//! * **The exchanged key is a [`SecretString`]**: it never reaches a `Debug`
//!   print or a log line from here.
//! * **`GET /credits` is never called**: it needs a management key, which an
//!   organisation's key is not.

use reqwest::Method;
use secrecy::SecretString;
use serde::Deserialize;
use tally_money::Usd;

use crate::{client::OpenRouterClient, error::OpenRouterError};

const BODY_LIMIT: usize = 256 * 1024;

/// What `GET /key` says about the key that asked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct KeyInfo {
    /// OpenRouter's masked label of the key (`sk-or-v1-au7...890`).
    #[serde(default)]
    pub label: String,
    /// Credit limit in USD (`None`: unlimited).
    #[serde(default, with = "tally_money::json_number::opt")]
    pub limit: Option<Usd>,
    /// What is left of the limit, USD.
    #[serde(default, with = "tally_money::json_number::opt")]
    pub limit_remaining: Option<Usd>,
    /// All-time usage, USD.
    #[serde(default, with = "tally_money::json_number::opt")]
    pub usage: Option<Usd>,
    /// Usage since the start of the UTC day, USD.
    #[serde(default, with = "tally_money::json_number::opt")]
    pub usage_daily: Option<Usd>,
    /// Usage since the start of the UTC week, USD.
    #[serde(default, with = "tally_money::json_number::opt")]
    pub usage_weekly: Option<Usd>,
    /// Usage since the start of the UTC month, USD.
    #[serde(default, with = "tally_money::json_number::opt")]
    pub usage_monthly: Option<Usd>,
    /// All-time BYOK usage (billed by the providers), USD.
    #[serde(default, with = "tally_money::json_number::opt")]
    pub byok_usage: Option<Usd>,
    /// BYOK usage this UTC day, USD.
    #[serde(default, with = "tally_money::json_number::opt")]
    pub byok_usage_daily: Option<Usd>,
    /// BYOK usage this UTC week, USD.
    #[serde(default, with = "tally_money::json_number::opt")]
    pub byok_usage_weekly: Option<Usd>,
    /// BYOK usage this UTC month, USD.
    #[serde(default, with = "tally_money::json_number::opt")]
    pub byok_usage_monthly: Option<Usd>,
    /// Whether the account is on the free tier.
    #[serde(default)]
    pub is_free_tier: bool,
}

#[derive(Deserialize)]
struct KeyEnvelope {
    data: KeyInfo,
}

impl KeyInfo {
    /// Parses the body of a `200` reply from `/key`.
    pub fn from_reply_body(body: &[u8]) -> Result<KeyInfo, OpenRouterError> {
        serde_json::from_slice::<KeyEnvelope>(body)
            .map(|e| e.data)
            .map_err(|e| OpenRouterError::malformed(200, format!("not a key reply: {e}")))
    }
}

/// The result of a PKCE code exchange.
#[derive(Debug)]
pub struct ExchangedKey {
    /// The new API key.
    pub key: SecretString,
    /// The OpenRouter user it belongs to, when sent.
    pub user_id: Option<String>,
}

#[derive(Deserialize)]
struct ExchangeReply {
    key: Option<String>,
    user_id: Option<String>,
}

impl OpenRouterClient {
    /// `GET {base}/key`: the key's label, limit and usage. 401 is
    /// [`OpenRouterError::Auth`] (the key is not valid).
    pub async fn key_info(&self) -> Result<KeyInfo, OpenRouterError> {
        let url = self.url("/key")?;
        let reply = self
            .send_and_read(self.request(Method::GET, url), BODY_LIMIT, false)
            .await?;
        KeyInfo::from_reply_body(&reply.body)
    }

    /// `POST {base}/auth/keys {code, code_verifier, code_challenge_method:
    /// "S256"}`: exchanges an OAuth PKCE code for an API key. OpenRouter
    /// answers 400 for a bad method and 403 for a wrong code or verifier
    /// (both [`OpenRouterError::Auth`] or
    /// [`OpenRouterError::UnexpectedStatus`]).
    pub async fn exchange_code(
        &self,
        code: &str,
        code_verifier: &SecretString,
    ) -> Result<ExchangedKey, OpenRouterError> {
        use secrecy::ExposeSecret as _;
        let url = self.url("/auth/keys")?;
        let body = serde_json::json!({
            "code": code,
            "code_verifier": code_verifier.expose_secret(),
            "code_challenge_method": "S256",
        });
        let req = self.request_without_key(Method::POST, url).json(&body);
        let reply = self.send_and_read(req, BODY_LIMIT, false).await?;
        let r: ExchangeReply = serde_json::from_slice(&reply.body).map_err(|e| {
            OpenRouterError::malformed(reply.status, format!("not a key exchange reply: {e}"))
        })?;
        let key = r
            .key
            .filter(|k| !k.trim().is_empty())
            .ok_or_else(|| OpenRouterError::malformed(reply.status, "reply has no \"key\""))?;
        Ok(ExchangedKey {
            key: SecretString::from(key),
            user_id: r.user_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_reply_reads_amounts_exactly() {
        let body = br#"{"data":{"label":"sk-or-v1-au7...890","limit":null,"limit_remaining":null,
            "usage":1.425e-7,"usage_daily":0.00000285,"usage_weekly":0,"usage_monthly":12.5,
            "byok_usage":0,"is_free_tier":true,"expires_at":null,"other":"ignored"}}"#;
        let k = KeyInfo::from_reply_body(body).unwrap();
        assert_eq!(k.label, "sk-or-v1-au7...890");
        assert_eq!(k.limit, None);
        assert_eq!(k.usage.unwrap().to_string(), "0.0000001425");
        assert_eq!(k.usage_daily.unwrap().to_string(), "0.00000285");
        assert!(k.is_free_tier);
        assert_eq!(
            KeyInfo::from_reply_body(br#"{"data":{"usage":"12"}}"#)
                .unwrap_err()
                .code(),
            "malformed_reply"
        );
    }
}
