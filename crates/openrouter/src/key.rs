//! `GET /key`: what OpenRouter says the calling key has spent.
//!
//! OpenRouter answers `{"data": {label, limit, limit_remaining, usage,
//! usage_daily, usage_weekly, usage_monthly, byok_usage, byok_usage_daily,
//! byok_usage_weekly, byok_usage_monthly, is_free_tier, …}}`, amounts in USD
//! as JSON numbers. The windows are UTC calendar windows: the current day,
//! the current week (from Monday) and the current month
//! ([`UsageWindow::start`]).
//!
//! # Decisions
//!
//! * **Amounts are read from the literal text of the number**, like
//!   generation costs; one that cannot be read exactly makes the reply
//!   malformed. A missing or `null` BYOK figure counts as zero (older keys
//!   do not report it); a missing non-BYOK figure is malformed.

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use reqwest::Method;
use serde::Deserialize;
use serde_json::value::RawValue;
use tally_money::Cost;

use crate::{client::OpenRouterClient, error::OpenRouterError, generation::cost};

/// One of OpenRouter's usage windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UsageWindow {
    /// Since 00:00 UTC today.
    Daily,
    /// Since 00:00 UTC on this week's Monday.
    Weekly,
    /// Since 00:00 UTC on the first of this month.
    Monthly,
}

impl UsageWindow {
    /// Every window, shortest first.
    pub const ALL: [UsageWindow; 3] = [
        UsageWindow::Daily,
        UsageWindow::Weekly,
        UsageWindow::Monthly,
    ];

    /// Its name (`daily`, `weekly`, `monthly`).
    pub fn as_str(self) -> &'static str {
        match self {
            UsageWindow::Daily => "daily",
            UsageWindow::Weekly => "weekly",
            UsageWindow::Monthly => "monthly",
        }
    }

    /// Where the window containing `now` starts.
    pub fn start(self, now: DateTime<Utc>) -> DateTime<Utc> {
        let day = Utc
            .with_ymd_and_hms(now.year(), now.month(), now.day(), 0, 0, 0)
            .single()
            .unwrap_or(now);
        match self {
            UsageWindow::Daily => day,
            UsageWindow::Weekly => {
                day - Duration::days(i64::from(now.weekday().num_days_from_monday()))
            }
            UsageWindow::Monthly => Utc
                .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
                .single()
                .unwrap_or(day),
        }
    }
}

/// What OpenRouter reports for one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowUsage {
    /// What OpenRouter charged (for BYOK generations only its fee), USD.
    pub usage: Cost,
    /// What upstream providers billed BYOK generations directly, USD.
    pub byok_usage: Cost,
}

/// The calling key's usage, as `GET /key` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsage {
    /// OpenRouter's masked label of the key (`sk-or-v1-au7...890`).
    pub label: Option<String>,
    /// Since 00:00 UTC today.
    pub daily: WindowUsage,
    /// Since Monday 00:00 UTC.
    pub weekly: WindowUsage,
    /// Since the first of the month, 00:00 UTC.
    pub monthly: WindowUsage,
}

impl KeyUsage {
    /// The figures of `window`.
    pub fn window(&self, window: UsageWindow) -> WindowUsage {
        match window {
            UsageWindow::Daily => self.daily,
            UsageWindow::Weekly => self.weekly,
            UsageWindow::Monthly => self.monthly,
        }
    }

    pub(crate) fn parse(body: &[u8], status: u16) -> Result<Self, OpenRouterError> {
        let bad = |reason: String| OpenRouterError::malformed(status, reason);
        #[derive(Deserialize)]
        struct Envelope<'a> {
            #[serde(borrow)]
            data: Option<Wire<'a>>,
        }
        #[derive(Deserialize)]
        struct Wire<'a> {
            label: Option<serde_json::Value>,
            #[serde(borrow)]
            usage_daily: Option<&'a RawValue>,
            #[serde(borrow)]
            usage_weekly: Option<&'a RawValue>,
            #[serde(borrow)]
            usage_monthly: Option<&'a RawValue>,
            #[serde(borrow)]
            byok_usage_daily: Option<&'a RawValue>,
            #[serde(borrow)]
            byok_usage_weekly: Option<&'a RawValue>,
            #[serde(borrow)]
            byok_usage_monthly: Option<&'a RawValue>,
        }
        let env: Envelope<'_> = serde_json::from_slice(body)
            .map_err(|e| bad(format!("body is not a key reply: {e}")))?;
        let w = env
            .data
            .ok_or_else(|| bad("reply has no \"data\" object".to_owned()))?;
        let required = |field: &str, raw| {
            cost(field, raw, status)?.ok_or_else(|| bad(format!("data.{field} is missing or null")))
        };
        let optional = |field: &str, raw| {
            Ok::<_, OpenRouterError>(cost(field, raw, status)?.unwrap_or_default())
        };
        Ok(KeyUsage {
            label: w.label.and_then(|l| l.as_str().map(str::to_owned)),
            daily: WindowUsage {
                usage: required("usage_daily", w.usage_daily)?,
                byok_usage: optional("byok_usage_daily", w.byok_usage_daily)?,
            },
            weekly: WindowUsage {
                usage: required("usage_weekly", w.usage_weekly)?,
                byok_usage: optional("byok_usage_weekly", w.byok_usage_weekly)?,
            },
            monthly: WindowUsage {
                usage: required("usage_monthly", w.usage_monthly)?,
                byok_usage: optional("byok_usage_monthly", w.byok_usage_monthly)?,
            },
        })
    }
}

impl OpenRouterClient {
    /// `GET /key`: the usage of the key this client sends.
    pub async fn key_usage(&self) -> Result<KeyUsage, OpenRouterError> {
        let url = self.url("/key")?;
        let reply = self
            .send_and_read(self.request(Method::GET, url), 64 * 1024, false)
            .await?;
        KeyUsage::parse(&reply.body, reply.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_exactly_and_byok_defaults_to_zero() {
        let body = br#"{"data":{"label":"sk-or-v1-au7...890","usage":12.5,
            "usage_daily":0.00012345678901234567,"usage_weekly":1.425e-7,"usage_monthly":3,
            "byok_usage_daily":0.5,"byok_usage_weekly":null}}"#;
        let k = KeyUsage::parse(body, 200).unwrap();
        assert_eq!(k.label.as_deref(), Some("sk-or-v1-au7...890"));
        assert_eq!(k.daily.usage.to_string(), "0.00012345678901234567");
        assert_eq!(k.weekly.usage.to_string(), "0.0000001425");
        assert_eq!(k.daily.byok_usage.to_string(), "0.5");
        assert_eq!(k.weekly.byok_usage, Cost::ZERO);
        assert_eq!(k.monthly.byok_usage, Cost::ZERO);
        let e = KeyUsage::parse(br#"{"data":{"usage_daily":"1"}}"#, 200).unwrap_err();
        assert_eq!(e.code(), "malformed_reply");
        let e =
            KeyUsage::parse(br#"{"data":{"usage_daily":1,"usage_weekly":1}}"#, 200).unwrap_err();
        assert!(e.to_string().contains("usage_monthly"), "{e}");
    }

    #[test]
    fn windows_are_utc_calendar_windows() {
        let now = Utc.with_ymd_and_hms(2026, 12, 3, 15, 4, 5).unwrap(); // Thursday
        let at = |y, m, d| Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap();
        assert_eq!(UsageWindow::Daily.start(now), at(2026, 12, 3));
        assert_eq!(UsageWindow::Weekly.start(now), at(2026, 11, 30));
        assert_eq!(UsageWindow::Monthly.start(now), at(2026, 12, 1));
    }
}
