//! Accounts and keys: the only bearer keys the simulator accepts are the
//! ones it issued (by the OAuth code exchange, by `POST /sim/keys`, or
//! pre-provisioned with [`SimConfig::provisioned_keys`](crate::SimConfig)),
//! and it records per key what it served, so a test can prove which key —
//! which organisation — a request used.
//!
//! * `GET /api/v1/key` — the key's own record, shaped like OpenRouter's:
//!   `{"data": {label (masked, "sk-or-v1-au7...890"), limit,
//!   limit_remaining, limit_reset, usage, usage_daily, usage_weekly,
//!   usage_monthly, byok_usage, byok_usage_daily, byok_usage_weekly,
//!   byok_usage_monthly, is_free_tier, expires_at}}`, amounts as JSON
//!   numbers with their exact digits.
//! * `GET /api/v1/models/user` — the catalog without the models hidden for
//!   this key (its "provider preferences").
//! * `POST /sim/keys` (admin) — issue a key ([`KeySpec`]) → `201`
//!   [`IssuedKey`]; `GET /sim/keys/activity?key=…` — [`KeyActivity`].
//!
//! # Invariants
//!
//! * Usage is per key and sums what the simulator charged for the
//!   generations that key ran: `usage*` the OpenRouter charge (for BYOK
//!   only the fee), `byok_usage*` what BYOK providers billed upstream;
//!   windows are UTC day, ISO week (from Monday) and calendar month.
//! * A revoked key is unknown from then on (401, like a deleted key).

use std::collections::HashMap;
use std::sync::Mutex;

use axum::{
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use chrono::{DateTime, Datelike, Duration as ChronoDuration, TimeZone, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tally_money::Usd;

use crate::{config::NumberFormat, number::format_number, reply, Simulator};

/// The key every test may use without issuing one: pre-provisioned by
/// [`SimConfig::ephemeral`](crate::SimConfig::ephemeral).
pub const TEST_KEY: &str = "sk-or-test";

/// A key to issue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// The key text (absent: a fresh `sk-or-v1-<64 hex>`).
    #[serde(default)]
    pub key: Option<String>,
    /// The account it belongs to (absent: a fresh `user_…`).
    #[serde(default)]
    pub user_id: Option<String>,
    /// Credit limit in USD, decimal string (absent: unlimited).
    #[serde(default, with = "tally_money::serde_cost::opt")]
    pub limit: Option<Usd>,
    /// Whether the account is on the free tier.
    #[serde(default)]
    pub is_free_tier: bool,
    /// Models `/models/user` leaves out for this key.
    #[serde(default)]
    pub hidden_models: Vec<String>,
}

/// A key the simulator issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedKey {
    /// The key.
    pub key: String,
    /// Its account.
    pub user_id: String,
    /// Its masked label, as `/key` reports it.
    pub label: String,
}

/// One generation a key ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    /// The generation id.
    pub id: String,
    /// When.
    pub at: DateTime<Utc>,
    /// What OpenRouter charged (BYOK: its fee), decimal string.
    #[serde(with = "tally_money::serde_cost")]
    pub charged: Usd,
    /// What the BYOK provider billed upstream, decimal string.
    #[serde(with = "tally_money::serde_cost::opt")]
    pub upstream: Option<Usd>,
}

/// What the simulator served to one key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyActivity {
    /// Its account.
    pub user_id: String,
    /// Generations run with it, in order.
    pub generations: Vec<Served>,
    /// `/generation?id=` lookups made with it (the ids, in order).
    pub lookups: Vec<String>,
    /// `/key` requests made with it.
    pub key_requests: u64,
    /// `/models/user` requests made with it.
    pub model_requests: u64,
}

#[derive(Debug, Clone)]
struct KeyRecord {
    spec: KeySpec,
    activity: KeyActivity,
}

/// Every issued key and what it was used for.
#[derive(Debug, Default)]
pub(crate) struct Accounts {
    keys: Mutex<HashMap<String, KeyRecord>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn random_alnum(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| {
            let c = rng.random_range(0..36u8);
            (if c < 10 { b'0' + c } else { b'a' + c - 10 }) as char
        })
        .collect()
}

fn random_hex(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from_digit(rng.random_range(0..16u32), 16).unwrap_or('0'))
        .collect()
}

/// OpenRouter's masked label of a key: `sk-or-v1-` and three characters,
/// `...`, the last three (`sk-or-v1-au7...890`).
pub fn masked_label(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let prefix = if key.starts_with("sk-or-v1-") { 9 } else { 0 };
    if chars.len() <= prefix + 6 {
        return format!("{}...", chars.iter().take(prefix).collect::<String>());
    }
    let head: String = chars[..prefix + 3].iter().collect();
    let tail: String = chars[chars.len() - 3..].iter().collect();
    format!("{head}...{tail}")
}

impl Accounts {
    pub(crate) fn new(provisioned: &[String]) -> Self {
        let a = Accounts::default();
        for key in provisioned {
            a.issue(KeySpec {
                key: Some(key.clone()),
                user_id: Some("user_provisioned".to_owned()),
                ..KeySpec::default()
            });
        }
        a
    }

    pub(crate) fn issue(&self, spec: KeySpec) -> IssuedKey {
        let key = spec
            .key
            .clone()
            .filter(|k| !k.trim().is_empty())
            .unwrap_or_else(|| format!("sk-or-v1-{}", random_hex(64)));
        let user_id = spec
            .user_id
            .clone()
            .unwrap_or_else(|| format!("user_{}", random_alnum(12)));
        let record = KeyRecord {
            spec,
            activity: KeyActivity {
                user_id: user_id.clone(),
                ..KeyActivity::default()
            },
        };
        lock(&self.keys).insert(key.clone(), record);
        IssuedKey {
            label: masked_label(&key),
            key,
            user_id,
        }
    }

    pub(crate) fn revoke(&self, key: &str) -> bool {
        lock(&self.keys).remove(key).is_some()
    }

    /// The issued key the request carries, if any.
    pub(crate) fn authenticate(&self, headers: &HeaderMap) -> Option<String> {
        let token = reply::bearer(headers)?;
        lock(&self.keys)
            .contains_key(token)
            .then(|| token.to_owned())
    }

    pub(crate) fn record_generation(&self, key: &str, served: Served) {
        if let Some(r) = lock(&self.keys).get_mut(key) {
            r.activity.generations.push(served);
        }
    }

    pub(crate) fn record_lookup(&self, key: &str, generation_id: &str) {
        if let Some(r) = lock(&self.keys).get_mut(key) {
            r.activity.lookups.push(generation_id.to_owned());
        }
    }

    pub(crate) fn activity(&self, key: &str) -> Option<KeyActivity> {
        lock(&self.keys).get(key).map(|r| r.activity.clone())
    }

    pub(crate) fn hidden_models(&self, key: &str) -> Vec<String> {
        lock(&self.keys)
            .get(key)
            .map(|r| r.spec.hidden_models.clone())
            .unwrap_or_default()
    }

    fn key_reply(&self, key: &str, now: DateTime<Utc>) -> Option<String> {
        let mut keys = lock(&self.keys);
        let r = keys.get_mut(key)?;
        r.activity.key_requests += 1;
        let day = Utc
            .with_ymd_and_hms(now.year(), now.month(), now.day(), 0, 0, 0)
            .single()
            .unwrap_or(now);
        let week = day - ChronoDuration::days(i64::from(now.weekday().num_days_from_monday()));
        let month = Utc
            .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
            .single()
            .unwrap_or(now);
        let sum = |since: Option<DateTime<Utc>>, byok: bool| -> Usd {
            r.activity
                .generations
                .iter()
                .filter(|g| since.is_none_or(|s| g.at >= s))
                .map(|g| {
                    if byok {
                        g.upstream.unwrap_or_default()
                    } else {
                        g.charged
                    }
                })
                .fold(Usd::ZERO, |a, b| a.checked_add(b).unwrap_or(Usd::MAX))
        };
        let n = |d: Usd| format_number(&d.normalize(), NumberFormat::Js);
        let usage = sum(None, false);
        let (limit, remaining) = match r.spec.limit {
            Some(l) => (
                n(l),
                n(l.checked_sub(usage).unwrap_or(Usd::ZERO).max(Usd::ZERO)),
            ),
            None => ("null".to_owned(), "null".to_owned()),
        };
        Some(format!(
            concat!(
                r#"{{"data":{{"label":"{label}","limit":{limit},"limit_remaining":{remaining},"#,
                r#""limit_reset":null,"include_byok_in_limit":false,"usage":{usage},"#,
                r#""usage_daily":{ud},"usage_weekly":{uw},"usage_monthly":{um},"#,
                r#""byok_usage":{bu},"byok_usage_daily":{bd},"byok_usage_weekly":{bw},"#,
                r#""byok_usage_monthly":{bm},"is_free_tier":{free},"expires_at":null,"#,
                r#""is_management_key":false,"is_provisioning_key":false,"#,
                r#""rate_limit":{{"requests":-1,"interval":"10s","note":"This field is deprecated and safe to ignore."}},"#,
                r#""allowed_data_regions":["global"],"budgets":[],"effective_budget":null,"#,
                r#""free_model_daily_requests":{{"limit":1000,"remaining":1000,"used":0}},"#,
                r#""creator_user_id":null,"organization_id":null,"workspace_id":null}}}}"#
            ),
            label = masked_label(key),
            limit = limit,
            remaining = remaining,
            usage = n(usage),
            ud = n(sum(Some(day), false)),
            uw = n(sum(Some(week), false)),
            um = n(sum(Some(month), false)),
            bu = n(sum(None, true)),
            bd = n(sum(Some(day), true)),
            bw = n(sum(Some(week), true)),
            bm = n(sum(Some(month), true)),
            free = r.spec.is_free_tier,
        ))
    }

    fn count_model_request(&self, key: &str) {
        if let Some(r) = lock(&self.keys).get_mut(key) {
            r.activity.model_requests += 1;
        }
    }
}

impl Simulator {
    /// Issues a key (see [`KeySpec`]).
    pub fn issue_key(&self, spec: KeySpec) -> IssuedKey {
        self.accounts.issue(spec)
    }

    /// Revokes a key: it is unknown from now on. Whether it existed.
    pub fn revoke_key(&self, key: &str) -> bool {
        self.accounts.revoke(key)
    }

    /// What the simulator served to `key` (`None`: never issued).
    pub fn key_activity(&self, key: &str) -> Option<KeyActivity> {
        self.accounts.activity(key)
    }
}

use reply::unknown_key;

/// `GET /api/v1/key`.
pub(crate) async fn get_key(State(sim): State<Simulator>, headers: HeaderMap) -> Response {
    let Some(key) = sim.accounts.authenticate(&headers) else {
        return unknown_key(&headers);
    };
    match sim.accounts.key_reply(&key, Utc::now()) {
        Some(body) => reply::json(StatusCode::OK, body),
        None => unknown_key(&headers),
    }
}

/// `GET /api/v1/models/user`.
pub(crate) async fn get_models_user(State(sim): State<Simulator>, headers: HeaderMap) -> Response {
    let Some(key) = sim.accounts.authenticate(&headers) else {
        return unknown_key(&headers);
    };
    sim.accounts.count_model_request(&key);
    let hidden = sim.accounts.hidden_models(&key);
    let catalog: serde_json::Value = match serde_json::from_str(crate::models::CATALOG_JSON) {
        Ok(v) => v,
        Err(_) => return reply::error(StatusCode::INTERNAL_SERVER_ERROR, "catalog", None),
    };
    let data: Vec<String> = catalog["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| {
            m["id"]
                .as_str()
                .is_some_and(|id| !hidden.iter().any(|h| h == id))
        })
        .map(|m| m.to_string())
        .collect();
    let texts: Vec<&str> = data.iter().map(String::as_str).collect();
    reply::json(
        StatusCode::OK,
        crate::models::list_body(&texts, texts.len(), None),
    )
}

/// `POST /sim/keys`.
pub(crate) async fn post_key(State(sim): State<Simulator>, Json(spec): Json<KeySpec>) -> Response {
    (StatusCode::CREATED, Json(sim.issue_key(spec))).into_response()
}

/// `?key=`.
#[derive(Debug, Deserialize)]
pub(crate) struct ActivityQuery {
    key: String,
}

/// `GET /sim/keys/activity?key=…`.
pub(crate) async fn get_activity(
    State(sim): State<Simulator>,
    Query(q): Query<ActivityQuery>,
) -> Response {
    match sim.key_activity(&q.key) {
        Some(a) => Json(a).into_response(),
        None => reply::error(StatusCode::NOT_FOUND, "no such key", None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_masked_like_openrouter() {
        assert_eq!(
            masked_label("sk-or-v1-au7f00000000000000000890"),
            "sk-or-v1-au7...890"
        );
        assert_eq!(masked_label("sk-or-test"), "sk-...est");
        assert_eq!(masked_label("abc"), "...");
    }

    #[test]
    fn usage_windows_sum_exactly() {
        let a = Accounts::new(&["k".to_owned()]);
        let now = Utc.with_ymd_and_hms(2026, 12, 2, 12, 0, 0).unwrap(); // a Wednesday
        let at = |d: u32, h: u32| Utc.with_ymd_and_hms(2026, 12, d, h, 0, 0).unwrap();
        for (id, when, charged, upstream) in [
            ("g1", at(2, 1), "0.1", None),
            ("g2", at(1, 1), "0.02", Some("0.5")),
            (
                "g3",
                Utc.with_ymd_and_hms(2026, 11, 30, 1, 0, 0).unwrap(),
                "0.003",
                None,
            ),
            (
                "g4",
                Utc.with_ymd_and_hms(2026, 11, 20, 1, 0, 0).unwrap(),
                "0.0004",
                None,
            ),
        ] {
            a.record_generation(
                "k",
                Served {
                    id: id.to_owned(),
                    at: when,
                    charged: charged.parse().unwrap(),
                    upstream: upstream.map(|u: &str| u.parse().unwrap()),
                },
            );
        }
        let body: serde_json::Value =
            serde_json::from_str(&a.key_reply("k", now).unwrap()).unwrap();
        let d = &body["data"];
        assert_eq!(d["usage"].to_string(), "0.1234");
        assert_eq!(d["usage_daily"].to_string(), "0.1");
        assert_eq!(d["usage_weekly"].to_string(), "0.123");
        assert_eq!(d["usage_monthly"].to_string(), "0.12");
        assert_eq!(d["byok_usage"].to_string(), "0.5");
        assert_eq!(d["byok_usage_daily"].to_string(), "0");
        assert_eq!(d["limit"], serde_json::Value::Null);
        assert_eq!(d["label"], "...");
    }
}
