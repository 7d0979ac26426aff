//! The load generator (`tally sim load`): a producer of
//! `tally.generation.completed.v1` events, as an agent runtime or the
//! generation worker would emit them.
//!
//! A share of the generations (`--missing-cost`) carries no actual cost,
//! only an estimate — like an aborted stream — and is registered with the
//! simulator so that the reconciler can find its real cost at
//! `/api/v1/generation`. The rest carry their actual cost.
//!
//! [`Generator`] makes the events and can be used in-process (the demo, the
//! benchmarks); [`run`] publishes them to NATS at a steady rate.
//!
//! # Decisions
//!
//! * **Costs with 17 significant digits.** Every generated cost has the
//!   precision OpenRouter reports, so any rounding anywhere downstream shows
//!   up as a wrong total.
//! * **Estimates off by up to ±20 %.** Realistic drift between the catalog
//!   estimate and the actual makes true-ups visible in the ledger.

use std::time::{Duration, Instant};

use chrono::Utc;
use rand::{rngs::StdRng, Rng, SeedableRng};
use tally_events::{
    Attribution, CloudEvent, EventType, GenerationCompleted, GenerationStatus, Usage,
};
use tally_money::{Cost, Usd};
use tokio::sync::watch;

use crate::{Fraction, GenerationSpec};

/// Options of `tally sim load`.
#[derive(clap::Args, Clone, Debug)]
pub struct LoadArgs {
    /// How many generations to emit.
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
    /// Generations per second.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Organisation of the generations.
    #[arg(long, default_value = "load")]
    pub org: String,
    /// Fraction (0..1) of generations without an actual cost (the reconciler must find it).
    #[arg(long, default_value = "0.3")]
    pub missing_cost: Fraction,
    /// Root URL of a running simulator (e.g. http://127.0.0.1:8090) to register
    /// the cost-missing generations with.
    #[arg(long, env = "TALLY_SIM_URL")]
    pub sim_url: Option<String>,
    /// Agents to spread generations over (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "researcher,writer,coder")]
    pub agents: Vec<String>,
    /// Models to spread generations over (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "openai/gpt-4o-mini,anthropic/claude-3.5-haiku,deepseek/deepseek-r1"
    )]
    pub models: Vec<String>,
    /// Seed for reproducible runs.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Smallest decimal exponent of a cost: every cost is a 17-significant-
    /// digit figure `d.dddddddddddddddd × 10^e` (the shape of a JavaScript
    /// double as OpenRouter prints it) with `e` uniform in
    /// `[cost_min_exponent, cost_max_exponent]`; `-12` is the smallest
    /// tally keeps exactly.
    #[arg(long, default_value_t = -4, allow_hyphen_values = true)]
    pub cost_min_exponent: i32,
    /// Largest decimal exponent of a cost (at most 9: below 10^10 USD).
    #[arg(long, default_value_t = -3, allow_hyphen_values = true)]
    pub cost_max_exponent: i32,
}

impl Default for LoadArgs {
    fn default() -> Self {
        LoadArgs {
            count: 1000,
            rate: 200,
            org: "load".into(),
            missing_cost: Fraction::from_ppm(300_000),
            sim_url: None,
            agents: vec!["researcher".into(), "writer".into(), "coder".into()],
            models: vec![
                "openai/gpt-4o-mini".into(),
                "anthropic/claude-3.5-haiku".into(),
                "deepseek/deepseek-r1".into(),
            ],
            seed: None,
            cost_min_exponent: -4,
            cost_max_exponent: -3,
        }
    }
}

/// Errors of the load generator.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Publishing to NATS failed.
    #[error("publish failed: {0}")]
    Publish(#[from] tally_bus::BusError),
    /// Registering generations with the simulator failed.
    #[error("simulator registration failed: {0}")]
    Simulator(String),
    /// Bad options.
    #[error("invalid option: {0}")]
    Invalid(String),
    /// The exact total of the published costs left `Usd`'s range.
    #[error("total of the published costs: {0}")]
    Total(#[from] tally_money::MoneyError),
}

impl LoadError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            LoadError::Publish(_) => "publish_failed",
            LoadError::Simulator(_) => "simulator_registration_failed",
            LoadError::Invalid(_) => "invalid_option",
            LoadError::Total(e) => e.code(),
        }
    }
}

/// One generated generation.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The event to publish.
    pub event: CloudEvent<GenerationCompleted>,
    /// For a cost-missing generation: what to register with the simulator.
    pub sim_spec: Option<GenerationSpec>,
    /// What it really cost.
    pub true_cost: Usd,
}

/// Makes completed events.
pub struct Generator {
    args: LoadArgs,
    rng: StdRng,
    run_id: String,
    next: u64,
    prefix: String,
}

impl Generator {
    /// A generator for `args`, publishing under `prefix`.
    pub fn new(args: LoadArgs, prefix: &str) -> Result<Generator, LoadError> {
        if args.agents.is_empty() || args.models.is_empty() {
            return Err(LoadError::Invalid(
                "--agents and --models need at least one value".into(),
            ));
        }
        if !(-12..=9).contains(&args.cost_min_exponent)
            || !(-12..=9).contains(&args.cost_max_exponent)
            || args.cost_min_exponent > args.cost_max_exponent
        {
            return Err(LoadError::Invalid(format!(
                "--cost-min-exponent {} and --cost-max-exponent {} must satisfy -12 <= min <= max <= 9",
                args.cost_min_exponent, args.cost_max_exponent
            )));
        }
        if !tally_events::is_valid_id(&args.org) {
            return Err(LoadError::Invalid(format!(
                "--org {:?} must match ^[A-Za-z0-9_-]{{1,64}}$",
                args.org
            )));
        }
        let rng = match args.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Ok(Generator {
            run_id: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
            args,
            rng,
            next: 0,
            prefix: prefix.to_owned(),
        })
    }

    /// The next generation.
    pub fn generate(&mut self) -> Generated {
        let i = self.next;
        self.next += 1;
        let id = format!("gen-{}-{i}", self.run_id);
        let agent = self.args.agents[self.rng.random_range(0..self.args.agents.len())].clone();
        let model = self.args.models[self.rng.random_range(0..self.args.models.len())].clone();
        // 17 significant digits × 10^e, e in the configured range.
        let mantissa: i64 = self
            .rng
            .random_range(10_000_000_000_000_000..100_000_000_000_000_000);
        let e = self
            .rng
            .random_range(self.args.cost_min_exponent..=self.args.cost_max_exponent);
        let true_cost = seventeen_digits(mantissa, e);
        let drift = self.rng.random_range(80..=120u32);
        let estimate = crate::number::scaled(true_cost, drift, 100);
        let missing = self.rng.random_range(0..1_000_000u32) < self.args.missing_cost.ppm();
        let prompt_tokens = self.rng.random_range(50..4000);
        let completion_tokens = self.rng.random_range(10..1500);
        let data = GenerationCompleted {
            generation_id: id.clone(),
            attribution: Attribution {
                org_id: self.args.org.clone(),
                agent_id: Some(agent),
                session_id: Some(format!("sess-{}-{}", self.run_id, i / 10)),
                user_id: Some(format!("user-{}", i % 7)),
                model: model.clone(),
            },
            provider: None,
            completed_at: Utc::now(),
            usage: Usage {
                prompt_tokens,
                completion_tokens,
                reasoning_tokens: None,
                cached_tokens: None,
                cache_write_tokens: None,
            },
            is_byok: false,
            actual_cost_usd: (!missing).then_some(positive(true_cost)),
            estimated_cost_usd: Some(positive(estimate)),
            status: GenerationStatus::Completed,
            request_id: None,
            upstream_inference_cost_usd: None,
        };
        let subject = EventType::GenerationCompleted.subject(&self.prefix, &self.args.org, None);
        let sim_spec = missing.then(|| GenerationSpec {
            id: id.clone(),
            total_cost: Some(true_cost),
            is_byok: Some(false),
            model: Some(model),
            ..Default::default()
        });
        Generated {
            event: CloudEvent::new(
                format!("completed-{id}"),
                "tally/sim-load",
                subject,
                data.completed_at,
                data,
            ),
            sim_spec,
            true_cost,
        }
    }
}

/// What a load run did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Events published.
    pub published: u64,
    /// Of which without an actual cost.
    pub missing_cost: u64,
    /// Sum of the true costs, exact.
    pub true_total: Usd,
    /// Wall time.
    pub elapsed: Duration,
}

impl std::fmt::Display for LoadReport {
    // A rate for people to read, not money.
    #[allow(clippy::float_arithmetic)]
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "load: published {} completed events ({} without cost) in {:.1}s ({:.0}/s); true total {} USD",
            self.published,
            self.missing_cost,
            secs,
            self.published as f64 / secs,
            tally_money::to_decimal_string(&self.true_total)
        )
    }
}

/// Publishes `args.count` completed events at `args.rate` per second,
/// registering the cost-missing ones with the simulator at `args.sim_url`.
pub async fn run(
    bus: &tally_bus::Bus,
    args: &LoadArgs,
    shutdown: watch::Receiver<bool>,
) -> Result<LoadReport, LoadError> {
    let mut generator = Generator::new(args.clone(), bus.prefix())?;
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut report = LoadReport {
        published: 0,
        missing_cost: 0,
        true_total: Usd::ZERO,
        elapsed: Duration::ZERO,
    };
    let rate = u64::from(args.rate.max(1));
    // Publish in ticks of 1/20 s so the rate is smooth.
    let per_tick = rate.div_ceil(20).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(1000 * per_tick / rate));
    while report.published < args.count && !*shutdown.borrow() {
        tick.tick().await;
        let n = per_tick.min(args.count - report.published);
        let batch: Vec<Generated> = (0..n).map(|_| generator.generate()).collect();
        let specs: Vec<&GenerationSpec> =
            batch.iter().filter_map(|g| g.sim_spec.as_ref()).collect();
        if !specs.is_empty() {
            match &args.sim_url {
                Some(url) => {
                    let resp = http
                        .post(format!(
                            "{}/sim/generations/batch",
                            url.trim_end_matches('/')
                        ))
                        .json(&specs)
                        .send()
                        .await
                        .map_err(|e| LoadError::Simulator(e.to_string()))?;
                    if !resp.status().is_success() {
                        return Err(LoadError::Simulator(format!("HTTP {}", resp.status())));
                    }
                }
                None => {
                    tracing::debug!("no --sim-url: cost-missing generations are not registered")
                }
            }
        }
        let publishes = batch
            .iter()
            .map(|g| bus.publish(&g.event.subject, &g.event.id, g.event.to_json().into()));
        for r in futures::future::join_all(publishes).await {
            r?;
        }
        for g in &batch {
            report.published += 1;
            report.true_total.try_add_assign(g.true_cost)?;
            if g.sim_spec.is_some() {
                report.missing_cost += 1;
            }
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// `mantissa × 10^(e-16)` for a 17-digit `mantissa`: `d.ddd… × 10^e`,
/// exact for every `e` in `-12..=9`.
/// A cost the load generator made up from a positive mantissa (and a
/// positive drift of it), so never negative.
fn positive(amount: Usd) -> Cost {
    Cost::new(amount).unwrap_or(Cost::ZERO)
}

fn seventeen_digits(mantissa: i64, e: i32) -> Usd {
    let scale = 16 - e;
    if scale >= 0 {
        Usd::from_parts(i128::from(mantissa), scale as u32)
    } else {
        Usd::from_parts(i128::from(mantissa) * 10i128.pow((-scale) as u32), 0)
    }
    .expect("validated exponent range")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_costs_are_exact_and_missing_ones_are_registered() {
        let mut g = Generator::new(
            LoadArgs {
                seed: Some(7),
                missing_cost: Fraction::from_ppm(500_000),
                ..Default::default()
            },
            "tally",
        )
        .unwrap();
        let mut missing = 0;
        for _ in 0..200 {
            let x = g.generate();
            assert!(x.true_cost > Usd::ZERO);
            assert!(x.true_cost.scale() <= tally_money::MAX_SCALE);
            match (&x.sim_spec, x.event.data.actual_cost_usd) {
                (Some(spec), None) => {
                    missing += 1;
                    assert_eq!(spec.total_cost, Some(x.true_cost));
                }
                (None, Some(actual)) => assert_eq!(actual, x.true_cost),
                other => panic!("inconsistent: {other:?}"),
            }
            assert_eq!(x.event.subject, "tally.generation.completed.load");
        }
        assert!((50..150).contains(&missing), "{missing}");
    }

    #[test]
    fn costs_span_the_whole_exponent_range_exactly() {
        let mut g = Generator::new(
            LoadArgs {
                seed: Some(11),
                missing_cost: Fraction::from_ppm(0),
                cost_min_exponent: -12,
                cost_max_exponent: 9,
                ..Default::default()
            },
            "tally",
        )
        .unwrap();
        let (mut smallest, mut largest) = (Usd::MAX, Usd::ZERO);
        for _ in 0..2000 {
            let x = g.generate();
            let text = tally_money::to_decimal_string(&x.true_cost);
            let digits = text.replace('.', "");
            let sig = digits.trim_start_matches('0').trim_end_matches('0');
            assert!(sig.len() <= 17, "{text}");
            smallest = smallest.min(x.true_cost);
            largest = largest.max(x.true_cost);
        }
        assert!(smallest < "0.00000000001".parse().unwrap(), "{smallest}");
        assert!(largest >= "1000000000".parse().unwrap(), "{largest}");
        let bad = Generator::new(
            LoadArgs {
                cost_min_exponent: -13,
                ..Default::default()
            },
            "tally",
        );
        assert_eq!(bad.err().map(|e| e.code()), Some("invalid_option"));
    }
}
