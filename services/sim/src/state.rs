//! The simulator's shared state: known generations, scripted replies, random
//! faults and call counters.
//!
//! Handlers ask `Shared::plan_generation_reply` what to answer; the
//! decision (which consumes a script step and rolls the dice) is made under
//! one short lock, and the reply is rendered outside it.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use rand::{rngs::StdRng, Rng, SeedableRng};
use tally_money::Usd;

use crate::config::{Fraction, NumberFormat, SimConfig, PPM};

/// One reply forced by a generation's script, played in order before the
/// normal behaviour resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScriptedReply {
    /// 404 "not found" (not yet).
    NotFound,
    /// 429 with `Retry-After`.
    RateLimited,
    /// 500.
    ServerError,
    /// 503 with `Retry-After`.
    Unavailable,
    /// 200 with a truncated JSON body.
    Malformed,
    /// 200 with `total_cost` written as a JSON string.
    CostAsString,
    /// 200 with a negative `total_cost`.
    NegativeCost,
    /// 200 with an HTML body (a misbehaving proxy).
    Html,
    /// Wait the configured slow delay, then behave normally.
    Slow,
    /// 401 even with a key.
    Unauthorized,
    /// 200 with the statistics, ready or not.
    Ok,
    /// 402 with OpenRouter's "insufficient credits" body.
    PaymentRequired,
    /// 502: the upstream provider failed (OpenRouter's body).
    BadGateway,
    /// 524: a timeout at OpenRouter's edge (Cloudflare).
    EdgeTimeout,
    /// 529: the provider is overloaded.
    Overloaded,
}

/// A generation the simulator knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimGeneration {
    /// The generation id (`gen-…`).
    pub id: String,
    /// `total_cost` (for BYOK: OpenRouter's fee), USD.
    pub total_cost: Usd,
    /// `upstream_inference_cost`, USD (`null` when `None`).
    pub upstream_inference_cost: Option<Usd>,
    /// Whether it ran on the customer's own key.
    pub is_byok: bool,
    /// When it was created; statistics are ready `ready_after` later.
    pub created_at: Instant,
    /// How long after creation the statistics are ready (`None`: the
    /// configured stats delay).
    pub ready_after: Option<Duration>,
    /// Replies forced before the normal behaviour, in order.
    pub script: Vec<ScriptedReply>,
    /// Answer 404 forever (an interrupted stream that never settles).
    pub never_ready: bool,
    /// The model that served it.
    pub model: String,
    /// The upstream provider.
    pub provider_name: String,
    /// Whether it was cancelled.
    pub cancelled: bool,
    /// Native prompt tokens.
    pub native_tokens_prompt: u64,
    /// Native completion tokens.
    pub native_tokens_completion: u64,
    /// How to write its costs (`None`: the configured format).
    pub number_format: Option<NumberFormat>,
    /// Native reasoning tokens (equal to the usage's `reasoning_tokens`).
    pub native_tokens_reasoning: u64,
    /// Native cached prompt tokens (equal to the usage's `cached_tokens`).
    pub native_tokens_cached: u64,
    /// Whether it was served as a stream.
    pub streamed: bool,
    /// `api_type`: `completions` for both chat completions and the
    /// Responses API (OpenRouter's enum has no separate value for the latter).
    pub api_type: String,
    /// `finish_reason` (`stop`, `length`, `error`; `None` when cancelled).
    pub finish_reason: Option<String>,
    /// The request's `session_id`.
    pub session_id: Option<String>,
    /// The request's `user`.
    pub external_user: Option<String>,
}

impl SimGeneration {
    /// A non-BYOK generation created now, with default metadata.
    pub fn new(id: impl Into<String>, total_cost: Usd) -> Self {
        SimGeneration {
            id: id.into(),
            total_cost,
            upstream_inference_cost: None,
            is_byok: false,
            created_at: Instant::now(),
            ready_after: None,
            script: Vec::new(),
            never_ready: false,
            model: "openai/gpt-4o-mini".to_owned(),
            provider_name: "OpenAI".to_owned(),
            cancelled: false,
            native_tokens_prompt: 118,
            native_tokens_completion: 41,
            number_format: None,
            native_tokens_reasoning: 0,
            native_tokens_cached: 0,
            streamed: false,
            api_type: "completions".to_owned(),
            finish_reason: Some("stop".to_owned()),
            session_id: None,
            external_user: None,
        }
    }

    /// Makes it a BYOK generation whose provider billed `upstream` directly.
    pub fn byok(mut self, upstream: Option<Usd>) -> Self {
        self.is_byok = true;
        self.upstream_inference_cost = upstream;
        self
    }

    /// Statistics ready `delay` after creation.
    pub fn ready_after(mut self, delay: Duration) -> Self {
        self.ready_after = Some(delay);
        self
    }

    /// Replies forced before the normal behaviour.
    pub fn script(mut self, script: impl IntoIterator<Item = ScriptedReply>) -> Self {
        self.script = script.into_iter().collect();
        self
    }

    /// Never ready: 404 forever.
    pub fn never_ready(mut self) -> Self {
        self.never_ready = true;
        self
    }

    /// Writes its costs in `format`.
    pub fn number_format(mut self, format: NumberFormat) -> Self {
        self.number_format = Some(format);
        self
    }

    /// What the generation really cost: `total_cost` plus, for BYOK, the
    /// upstream cost.
    pub fn actual_cost(&self) -> Usd {
        match (self.is_byok, self.upstream_inference_cost) {
            // A simulator knob may register amounts whose sum leaves the range;
            // its admin view then shows the bound.
            (true, Some(u)) => self.total_cost.checked_add(u).unwrap_or(Usd::MAX),
            _ => self.total_cost,
        }
    }
}

/// What a handler should answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplyKind {
    Ok,
    NotFound,
    RateLimited,
    ServerError,
    Unavailable,
    Malformed,
    CostAsString,
    NegativeCost,
    Html,
    Unauthorized,
    PaymentRequired,
    BadGateway,
    EdgeTimeout,
    Overloaded,
}

/// A decision for one `/generation` request.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) kind: ReplyKind,
    /// Wait the slow delay before answering.
    pub(crate) slow: bool,
    /// The generation, when known (needed for 200 bodies).
    pub(crate) generation: Option<SimGeneration>,
}

/// Reply kinds counted by [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    Ok,
    NotFound,
    RateLimited,
    ServerError,
    Unavailable,
    Malformed,
    Slow,
    Unauthorized,
    BadRequest,
    Models,
    PaymentRequired,
}

impl Counted {
    const ALL: [Counted; 11] = [
        Counted::Ok,
        Counted::NotFound,
        Counted::RateLimited,
        Counted::ServerError,
        Counted::Unavailable,
        Counted::Malformed,
        Counted::Slow,
        Counted::Unauthorized,
        Counted::BadRequest,
        Counted::Models,
        Counted::PaymentRequired,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Counted::Ok => "ok",
            Counted::NotFound => "not_found",
            Counted::RateLimited => "rate_limited",
            Counted::ServerError => "server_error",
            Counted::Unavailable => "unavailable",
            Counted::Malformed => "malformed",
            Counted::Slow => "slow",
            Counted::Unauthorized => "unauthorized",
            Counted::BadRequest => "bad_request",
            Counted::Models => "models",
            Counted::PaymentRequired => "payment_required",
        }
    }
}

impl From<ReplyKind> for Counted {
    fn from(k: ReplyKind) -> Self {
        match k {
            ReplyKind::Ok => Counted::Ok,
            ReplyKind::NotFound => Counted::NotFound,
            ReplyKind::RateLimited => Counted::RateLimited,
            ReplyKind::ServerError
            | ReplyKind::BadGateway
            | ReplyKind::EdgeTimeout
            | ReplyKind::Overloaded => Counted::ServerError,
            ReplyKind::Unavailable => Counted::Unavailable,
            ReplyKind::PaymentRequired => Counted::PaymentRequired,
            ReplyKind::Malformed
            | ReplyKind::CostAsString
            | ReplyKind::NegativeCost
            | ReplyKind::Html => Counted::Malformed,
            ReplyKind::Unauthorized => Counted::Unauthorized,
        }
    }
}

/// Call counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    generation_requests: AtomicU64,
    by_kind: [AtomicU64; Counted::ALL.len()],
}

impl Counters {
    pub(crate) fn count(&self, kind: Counted) {
        self.by_kind[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_generation_request(&self) {
        self.generation_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn generation_requests(&self) -> u64 {
        self.generation_requests.load(Ordering::Relaxed)
    }

    pub(crate) fn snapshot(&self) -> Vec<(&'static str, u64)> {
        Counted::ALL
            .iter()
            .map(|k| (k.name(), self.by_kind[*k as usize].load(Ordering::Relaxed)))
            .collect()
    }

    pub(crate) fn reset(&self) {
        self.generation_requests.store(0, Ordering::Relaxed);
        for c in &self.by_kind {
            c.store(0, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, Default)]
struct Entry {
    generation: Option<SimGeneration>,
    /// Next script step to play.
    script_pos: usize,
    /// `/generation` requests for this id.
    calls: u64,
}

/// State shared by every handler.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) cfg: SimConfig,
    pub(crate) counters: Counters,
    rng: Mutex<StdRng>,
    entries: Mutex<HashMap<String, Entry>>,
}

/// Locks, recovering from poisoning: the state stays consistent because no
/// critical section panics half-way through an update that matters.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

const MODELS: [(&str, &str); 3] = [
    ("openai/gpt-4o-mini", "OpenAI"),
    ("deepseek/deepseek-r1", "DeepInfra"),
    ("anthropic/claude-3.5-haiku", "Anthropic"),
];

impl Shared {
    pub(crate) fn new(cfg: SimConfig) -> Self {
        let rng = match cfg.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Shared {
            cfg,
            counters: Counters::default(),
            rng: Mutex::new(rng),
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn register(&self, g: SimGeneration) {
        let mut entries = lock(&self.entries);
        let entry = entries.entry(g.id.clone()).or_default();
        entry.generation = Some(g);
        entry.script_pos = 0;
    }

    pub(crate) fn generation(&self, id: &str) -> Option<SimGeneration> {
        lock(&self.entries)
            .get(id)
            .and_then(|e| e.generation.clone())
    }

    pub(crate) fn registered(&self) -> usize {
        lock(&self.entries)
            .values()
            .filter(|e| e.generation.is_some())
            .count()
    }

    pub(crate) fn calls(&self, id: &str) -> u64 {
        lock(&self.entries).get(id).map_or(0, |e| e.calls)
    }

    pub(crate) fn reset(&self) {
        lock(&self.entries).clear();
        self.counters.reset();
    }

    fn roll(&self, p: Fraction) -> bool {
        !p.is_zero() && lock(&self.rng).random_range(0..PPM) < p.ppm()
    }

    /// Records a `/generation` request for `id` (before authentication).
    pub(crate) fn record_call(&self, id: &str) {
        self.counters.count_generation_request();
        let mut entries = lock(&self.entries);
        match entries.get_mut(id) {
            Some(e) => e.calls += 1,
            None => {
                entries.insert(
                    id.to_owned(),
                    Entry {
                        calls: 1,
                        ..Entry::default()
                    },
                );
            }
        }
    }

    /// Decides the reply to an authenticated `/generation` request.
    pub(crate) fn plan_generation_reply(&self, id: &str) -> Plan {
        let scripted = {
            let mut entries = lock(&self.entries);
            let entry = entries.entry(id.to_owned()).or_default();
            let step = entry
                .generation
                .as_ref()
                .and_then(|g| g.script.get(entry.script_pos).copied());
            if step.is_some() {
                entry.script_pos += 1;
            }
            (step, entry.generation.clone())
        };
        let (step, generation) = scripted;
        if let Some(step) = step {
            let kind = match step {
                ScriptedReply::NotFound => ReplyKind::NotFound,
                ScriptedReply::RateLimited => ReplyKind::RateLimited,
                ScriptedReply::ServerError => ReplyKind::ServerError,
                ScriptedReply::Unavailable => ReplyKind::Unavailable,
                ScriptedReply::Malformed => ReplyKind::Malformed,
                ScriptedReply::CostAsString => ReplyKind::CostAsString,
                ScriptedReply::NegativeCost => ReplyKind::NegativeCost,
                ScriptedReply::Html => ReplyKind::Html,
                ScriptedReply::Unauthorized => ReplyKind::Unauthorized,
                ScriptedReply::Ok => ReplyKind::Ok,
                ScriptedReply::PaymentRequired => ReplyKind::PaymentRequired,
                ScriptedReply::BadGateway => ReplyKind::BadGateway,
                ScriptedReply::EdgeTimeout => ReplyKind::EdgeTimeout,
                ScriptedReply::Overloaded => ReplyKind::Overloaded,
                ScriptedReply::Slow => {
                    return Plan {
                        kind: self.normal(generation.as_ref()),
                        slow: true,
                        generation,
                    }
                }
            };
            return Plan {
                kind,
                slow: false,
                generation,
            };
        }
        let (fault, slow) = self.roll_fault();
        let kind = match fault {
            Some(Fault::RateLimited) => ReplyKind::RateLimited,
            Some(Fault::ServerError) => ReplyKind::ServerError,
            Some(Fault::Malformed) => {
                let options = [
                    ReplyKind::Malformed,
                    ReplyKind::CostAsString,
                    ReplyKind::NegativeCost,
                    ReplyKind::Html,
                ];
                options[lock(&self.rng).random_range(0..options.len())]
            }
            Some(Fault::NotFound) => ReplyKind::NotFound,
            None => self.normal(generation.as_ref()),
        };
        Plan {
            kind,
            slow,
            generation,
        }
    }

    /// The reply without faults: 200 once ready, else 404.
    fn normal(&self, g: Option<&SimGeneration>) -> ReplyKind {
        match g {
            Some(g) if !g.never_ready => {
                let delay = g.ready_after.unwrap_or(self.cfg.stats_delay);
                if g.created_at.elapsed() >= delay {
                    ReplyKind::Ok
                } else {
                    ReplyKind::NotFound
                }
            }
            _ => ReplyKind::NotFound,
        }
    }

    /// One draw decides the fault (rates are exclusive, in the order
    /// 429, 500, malformed, slow, 404); returns (fault, slow).
    fn roll_fault(&self) -> (Option<Fault>, bool) {
        let c = &self.cfg;
        let rates = [
            (c.rate_429, Some(Fault::RateLimited)),
            (c.rate_500, Some(Fault::ServerError)),
            (c.rate_malformed, Some(Fault::Malformed)),
            (c.rate_slow, None),
            (c.rate_404, Some(Fault::NotFound)),
        ];
        if rates.iter().all(|(p, _)| p.is_zero()) {
            return (None, false);
        }
        let draw = lock(&self.rng).random_range(0..PPM);
        let mut threshold = 0u32;
        for (p, fault) in rates {
            threshold = threshold.saturating_add(p.ppm());
            if draw < threshold {
                return match fault {
                    Some(f) => (Some(f), false),
                    None => (None, true),
                };
            }
        }
        (None, false)
    }

    /// A generation with random, realistic costs: up to 17 significant
    /// digits, magnitudes from 1e-8 to 1e-2 USD, BYOK at the configured rate.
    pub(crate) fn random_generation(&self, id: String, is_byok: Option<bool>) -> SimGeneration {
        let is_byok = is_byok.unwrap_or_else(|| self.roll(self.cfg.byok_rate));
        let mut rng = lock(&self.rng);
        let (model, provider) = MODELS[rng.random_range(0..MODELS.len())];
        let mut g = SimGeneration::new(id, random_cost(&mut rng));
        g.model = model.to_owned();
        g.provider_name = provider.to_owned();
        g.native_tokens_prompt = rng.random_range(1..20_000);
        g.native_tokens_completion = rng.random_range(1..4_000);
        if is_byok {
            // The fee is a small cost of its own; the provider bills the rest.
            let upstream = random_cost(&mut rng);
            g = g.byok(Some(upstream));
        }
        g
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    RateLimited,
    ServerError,
    Malformed,
    NotFound,
}

/// A random cost: `k` significant digits (1..=17) with the leading digit at
/// 10^-2 … 10^-8, never more than 20 decimals.
fn random_cost(rng: &mut StdRng) -> Usd {
    let lead: i64 = rng.random_range(2..=8); // leading digit at 10^-lead
    let max_digits = (21 - lead).min(17);
    let k = rng.random_range(1..=max_digits);
    let low = 10i64.pow((k - 1) as u32);
    let mantissa = rng.random_range(low..low * 10);
    let scale = (lead + k - 1) as u32;
    Usd::new(mantissa, scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(cfg: SimConfig) -> Shared {
        Shared::new(SimConfig {
            seed: Some(7),
            ..cfg
        })
    }

    #[test]
    fn random_costs_are_valid_money() {
        let s = shared(SimConfig {
            byok_rate: Fraction::from_ppm(500_000),
            ..SimConfig::ephemeral()
        });
        let mut byok = 0;
        for i in 0..2000 {
            let g = s.random_generation(format!("g{i}"), None);
            assert_eq!(
                tally_money::ensure_cost(g.total_cost),
                Ok(g.total_cost.normalize())
            );
            assert!(g.total_cost > Usd::ZERO && g.total_cost < Usd::new(1, 1));
            if g.is_byok {
                byok += 1;
                assert!(g.upstream_inference_cost.is_some());
            }
        }
        assert!((800..1200).contains(&byok), "{byok}");
    }

    #[test]
    fn scripts_play_in_order_then_normal() {
        let s = shared(SimConfig::ephemeral());
        s.register(
            SimGeneration::new("g", Usd::ONE)
                .script([
                    ScriptedReply::RateLimited,
                    ScriptedReply::Ok,
                    ScriptedReply::Html,
                ])
                .never_ready(),
        );
        let kinds: Vec<_> = (0..4).map(|_| s.plan_generation_reply("g").kind).collect();
        assert_eq!(
            kinds,
            [
                ReplyKind::RateLimited,
                ReplyKind::Ok,
                ReplyKind::Html,
                ReplyKind::NotFound
            ]
        );
        assert_eq!(s.plan_generation_reply("unknown").kind, ReplyKind::NotFound);
    }

    #[test]
    fn fault_rates_are_respected() {
        let s = shared(SimConfig {
            rate_429: Fraction::from_ppm(250_000),
            rate_500: Fraction::from_ppm(250_000),
            ..SimConfig::ephemeral()
        });
        s.register(SimGeneration::new("g", Usd::ONE));
        let mut counts = HashMap::new();
        for _ in 0..4000 {
            *counts
                .entry(s.plan_generation_reply("g").kind as u8)
                .or_insert(0) += 1;
        }
        for kind in [
            ReplyKind::Ok,
            ReplyKind::RateLimited,
            ReplyKind::ServerError,
        ] {
            let n = counts.get(&(kind as u8)).copied().unwrap_or(0);
            let expected = if kind == ReplyKind::Ok { 2000 } else { 1000 };
            assert!(
                (expected * 8 / 10..expected * 12 / 10).contains(&n),
                "{kind:?}: {n}"
            );
        }
    }
}
