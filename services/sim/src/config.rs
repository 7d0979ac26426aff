//! Simulator settings: the command line ([`SimArgs`]) and the plain
//! configuration it turns into ([`SimConfig`]).
//!
//! # Decisions
//!
//! * **Fractions are parts per million, not floats.** A rate such as `0.05`
//!   is read exactly (through `Decimal`) into a [`Fraction`] of 50 000 ppm
//!   and compared against a random integer: no floating point anywhere,
//!   and a seeded run is reproducible on every machine.
//! * **The fault rates are exclusive**: one draw per request decides 429,
//!   500, malformed, slow or a spurious 404, in that order, so their sum is
//!   the fraction of faulty replies (capped at 1).

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use rust_decimal::{prelude::ToPrimitive, Decimal};

/// One million: [`Fraction`]'s denominator.
pub const PPM: u32 = 1_000_000;

/// A probability between 0 and 1, exact to one part per million.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fraction {
    ppm: u32,
}

impl Fraction {
    /// Never.
    pub const ZERO: Fraction = Fraction { ppm: 0 };
    /// Always.
    pub const ONE: Fraction = Fraction { ppm: PPM };

    /// A fraction of `ppm` parts per million (values above one million mean "always").
    pub fn from_ppm(ppm: u32) -> Fraction {
        Fraction { ppm: ppm.min(PPM) }
    }

    /// Parts per million.
    pub fn ppm(self) -> u32 {
        self.ppm
    }

    /// Whether the fraction is zero.
    pub fn is_zero(self) -> bool {
        self.ppm == 0
    }
}

impl FromStr for Fraction {
    type Err = String;

    /// Reads `0`, `0.05`, `1`, … (a decimal between 0 and 1, rounded to ppm).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a fraction between 0 and 1 (e.g. 0.05)");
        let d = Decimal::from_str(s.trim()).map_err(|_| bad())?;
        if d < Decimal::ZERO || d > Decimal::ONE {
            return Err(bad());
        }
        let ppm = (d * Decimal::from(PPM)).round().to_u32().ok_or_else(bad)?;
        Ok(Fraction::from_ppm(ppm))
    }
}

impl fmt::Display for Fraction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = Decimal::new(i64::from(self.ppm), 6).normalize();
        write!(f, "{d}")
    }
}

/// How costs are written as JSON numbers.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum NumberFormat {
    /// Like JavaScript's `Number.prototype.toString`, as OpenRouter's backend
    /// prints doubles: exponent notation below `1e-6` (`1.425e-7`), plain
    /// decimals otherwise (`0.00000285`).
    #[default]
    Js,
    /// Always a plain decimal (`0.0000001425`).
    Plain,
    /// Always exponent notation (`2.85e-6`).
    Exponent,
}

/// The simulator's behaviour. [`Default`] matches the command line defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Where to listen (port 0: any free port).
    pub addr: SocketAddr,
    /// How long after creation `/generation` keeps answering 404.
    pub stats_delay: Duration,
    /// Fraction of requests for a *ready* generation answered 404 anyway.
    pub rate_404: Fraction,
    /// Fraction of requests answered 429 with `Retry-After`.
    pub rate_429: Fraction,
    /// Fraction of requests answered 500.
    pub rate_500: Fraction,
    /// Fraction of requests answered 200 with a malformed body.
    pub rate_malformed: Fraction,
    /// Fraction of requests answered only after [`slow_delay`](Self::slow_delay).
    pub rate_slow: Fraction,
    /// `Retry-After` sent with 429 and 503 (whole seconds, rounded up).
    pub retry_after: Duration,
    /// How long a slow reply waits.
    pub slow_delay: Duration,
    /// Fraction of generated (not explicitly priced) generations that are BYOK.
    pub byok_rate: Fraction,
    /// How costs are written.
    pub number_format: NumberFormat,
    /// Seed for the random faults and generated costs (`None`: from the OS).
    pub seed: Option<u64>,
    /// Generation endpoints (`/responses`, `/chat/completions`): how long
    /// before the first byte of a reply.
    pub gen_latency: Duration,
    /// Generation endpoints: how long the body is held back after the
    /// response headers (with `X-Generation-Id`) went out — the window in
    /// which a client knows the generation exists but has no cost yet.
    pub gen_body_delay: Duration,
    /// Generation endpoints: fraction of streams cut before the final event
    /// (no usage; the connection is closed mid-body).
    pub gen_abort_rate: Fraction,
    /// Generation endpoints: fraction of replies whose `usage.cost` is `null`.
    pub gen_missing_cost_rate: Fraction,
    /// Generation endpoints: fraction of requests answered 429 with `Retry-After`.
    pub gen_rate_429: Fraction,
    /// Generation endpoints: fraction of requests answered 500.
    pub gen_rate_500: Fraction,
    /// Keys accepted from the start (one account), besides those the
    /// simulator issues; [`SimConfig::ephemeral`] provisions
    /// [`TEST_KEY`](crate::TEST_KEY).
    pub provisioned_keys: Vec<String>,
    /// Generation endpoints: fraction of streams that fail mid-way with an
    /// error event (chat: a chunk with `finish_reason: "error"`; responses:
    /// `response.failed`) after the `X-Generation-Id` header and some output.
    pub gen_mid_stream_error_rate: Fraction,
    /// Generation endpoints: fraction of requests answered 402 (insufficient credits).
    pub gen_rate_402: Fraction,
    /// Generation endpoints: fraction of requests answered 502 (provider error).
    pub gen_rate_502: Fraction,
    /// Generation endpoints: fraction of requests answered 524 (edge timeout).
    pub gen_rate_524: Fraction,
    /// Generation endpoints: fraction of requests answered 529 (provider overloaded).
    pub gen_rate_529: Fraction,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8090)),
            stats_delay: Duration::from_secs(2),
            rate_404: Fraction::ZERO,
            rate_429: Fraction::ZERO,
            rate_500: Fraction::ZERO,
            rate_malformed: Fraction::ZERO,
            rate_slow: Fraction::ZERO,
            retry_after: Duration::from_secs(1),
            slow_delay: Duration::from_secs(3),
            byok_rate: Fraction::ZERO,
            number_format: NumberFormat::Js,
            seed: None,
            gen_latency: Duration::ZERO,
            gen_body_delay: Duration::ZERO,
            gen_abort_rate: Fraction::ZERO,
            gen_missing_cost_rate: Fraction::ZERO,
            gen_rate_429: Fraction::ZERO,
            gen_rate_500: Fraction::ZERO,
            provisioned_keys: Vec::new(),
            gen_mid_stream_error_rate: Fraction::ZERO,
            gen_rate_402: Fraction::ZERO,
            gen_rate_502: Fraction::ZERO,
            gen_rate_524: Fraction::ZERO,
            gen_rate_529: Fraction::ZERO,
        }
    }
}

impl SimConfig {
    /// The defaults, listening on `127.0.0.1` on any free port, with no
    /// stats delay and [`TEST_KEY`](crate::TEST_KEY) provisioned: the
    /// usual start for a test.
    pub fn ephemeral() -> Self {
        SimConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stats_delay: Duration::ZERO,
            provisioned_keys: vec![crate::TEST_KEY.to_owned()],
            ..SimConfig::default()
        }
    }
}

/// `tally sim openrouter`: an OpenRouter simulator for tests, demos and load.
#[derive(clap::Args, Clone, Debug)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, env = "TALLY_SIM_ADDR", default_value = "127.0.0.1:8090")]
    pub addr: SocketAddr,
    /// How long after creation `GET /generation` answers 404 ("not yet").
    #[arg(long, env = "TALLY_SIM_STATS_DELAY", default_value = "2s", value_parser = humantime::parse_duration)]
    pub stats_delay: Duration,
    /// Fraction (0..1) of requests for a ready generation answered 404 anyway.
    #[arg(
        long,
        alias = "error-rate-404",
        env = "TALLY_SIM_RATE_404",
        default_value = "0"
    )]
    pub rate_404: Fraction,
    /// Fraction (0..1) of requests answered 429 with `Retry-After`.
    #[arg(
        long,
        alias = "error-rate-429",
        env = "TALLY_SIM_RATE_429",
        default_value = "0"
    )]
    pub rate_429: Fraction,
    /// Fraction (0..1) of requests answered 500.
    #[arg(
        long,
        alias = "error-rate-500",
        env = "TALLY_SIM_RATE_500",
        default_value = "0"
    )]
    pub rate_500: Fraction,
    /// Fraction (0..1) of requests answered 200 with a malformed body.
    #[arg(
        long,
        alias = "error-rate-malformed",
        env = "TALLY_SIM_RATE_MALFORMED",
        default_value = "0"
    )]
    pub rate_malformed: Fraction,
    /// Fraction (0..1) of requests answered only after --slow-delay.
    #[arg(
        long,
        alias = "error-rate-slow",
        env = "TALLY_SIM_RATE_SLOW",
        default_value = "0"
    )]
    pub rate_slow: Fraction,
    /// `Retry-After` sent with 429 and 503 replies.
    #[arg(long, env = "TALLY_SIM_RETRY_AFTER", default_value = "1s", value_parser = humantime::parse_duration)]
    pub retry_after: Duration,
    /// How long a slow reply waits.
    #[arg(long, env = "TALLY_SIM_SLOW_DELAY", default_value = "3s", value_parser = humantime::parse_duration)]
    pub slow_delay: Duration,
    /// Fraction (0..1) of generated generations that are BYOK.
    #[arg(long, env = "TALLY_SIM_BYOK_RATE", default_value = "0")]
    pub byok_rate: Fraction,
    /// How costs are written as JSON numbers.
    #[arg(
        long,
        env = "TALLY_SIM_NUMBER_FORMAT",
        value_enum,
        default_value = "js"
    )]
    pub number_format: NumberFormat,
    /// Seed for random faults and costs (reproducible runs).
    #[arg(long, env = "TALLY_SIM_SEED")]
    pub seed: Option<u64>,
    /// `/responses` and `/chat/completions`: delay before the first byte.
    #[arg(long, env = "TALLY_SIM_GEN_LATENCY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub gen_latency: Duration,
    /// `/responses`: hold the body back this long after the headers (with
    /// `X-Generation-Id`) went out.
    #[arg(long, env = "TALLY_SIM_GEN_BODY_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub gen_body_delay: Duration,
    /// Fraction (0..1) of generation streams cut before their final event (no usage).
    #[arg(long, env = "TALLY_SIM_GEN_ABORT_RATE", default_value = "0")]
    pub gen_abort_rate: Fraction,
    /// Fraction (0..1) of generation replies with `usage.cost: null`.
    #[arg(long, env = "TALLY_SIM_GEN_MISSING_COST_RATE", default_value = "0")]
    pub gen_missing_cost_rate: Fraction,
    /// Fraction (0..1) of generation requests answered 429 with `Retry-After`.
    #[arg(long, env = "TALLY_SIM_GEN_RATE_429", default_value = "0")]
    pub gen_rate_429: Fraction,
    /// Fraction (0..1) of generation requests answered 500.
    #[arg(long, env = "TALLY_SIM_GEN_RATE_500", default_value = "0")]
    pub gen_rate_500: Fraction,
    /// Keys accepted from the start (comma-separated), besides those issued
    /// by the OAuth exchange or `POST /sim/keys`.
    #[arg(long = "provision-key", env = "TALLY_SIM_KEYS", value_delimiter = ',')]
    pub provisioned_keys: Vec<String>,
    /// Fraction (0..1) of generation streams that fail mid-way with an error event.
    #[arg(long, env = "TALLY_SIM_GEN_MID_STREAM_ERROR_RATE", default_value = "0")]
    pub gen_mid_stream_error_rate: Fraction,
    /// Fraction (0..1) of generation requests answered 402 (insufficient credits).
    #[arg(long, env = "TALLY_SIM_GEN_RATE_402", default_value = "0")]
    pub gen_rate_402: Fraction,
    /// Fraction (0..1) of generation requests answered 502 (provider error).
    #[arg(long, env = "TALLY_SIM_GEN_RATE_502", default_value = "0")]
    pub gen_rate_502: Fraction,
    /// Fraction (0..1) of generation requests answered 524 (edge timeout).
    #[arg(long, env = "TALLY_SIM_GEN_RATE_524", default_value = "0")]
    pub gen_rate_524: Fraction,
    /// Fraction (0..1) of generation requests answered 529 (provider overloaded).
    #[arg(long, env = "TALLY_SIM_GEN_RATE_529", default_value = "0")]
    pub gen_rate_529: Fraction,
}

impl From<SimArgs> for SimConfig {
    fn from(a: SimArgs) -> Self {
        SimConfig {
            addr: a.addr,
            stats_delay: a.stats_delay,
            rate_404: a.rate_404,
            rate_429: a.rate_429,
            rate_500: a.rate_500,
            rate_malformed: a.rate_malformed,
            rate_slow: a.rate_slow,
            retry_after: a.retry_after,
            slow_delay: a.slow_delay,
            byok_rate: a.byok_rate,
            number_format: a.number_format,
            seed: a.seed,
            gen_latency: a.gen_latency,
            gen_body_delay: a.gen_body_delay,
            gen_abort_rate: a.gen_abort_rate,
            gen_missing_cost_rate: a.gen_missing_cost_rate,
            gen_rate_429: a.gen_rate_429,
            gen_rate_500: a.gen_rate_500,
            provisioned_keys: a
                .provisioned_keys
                .into_iter()
                .map(|k| k.trim().to_owned())
                .filter(|k| !k.is_empty())
                .collect(),
            gen_mid_stream_error_rate: a.gen_mid_stream_error_rate,
            gen_rate_402: a.gen_rate_402,
            gen_rate_502: a.gen_rate_502,
            gen_rate_524: a.gen_rate_524,
            gen_rate_529: a.gen_rate_529,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn fractions_are_exact() {
        assert_eq!("0.05".parse::<Fraction>().unwrap().ppm(), 50_000);
        assert_eq!("1".parse::<Fraction>().unwrap(), Fraction::ONE);
        assert_eq!("0".parse::<Fraction>().unwrap(), Fraction::ZERO);
        assert_eq!("0.0000004".parse::<Fraction>().unwrap().ppm(), 0);
        for bad in ["-0.1", "1.01", "x", ""] {
            assert!(bad.parse::<Fraction>().is_err(), "{bad:?}");
        }
        assert_eq!(Fraction::from_ppm(50_000).to_string(), "0.05");
    }

    #[test]
    fn defaults_match_the_config_defaults() {
        let cli = Cli::try_parse_from(["sim"]).unwrap();
        // The environment may set an address in CI; compare the rest.
        let want = SimConfig {
            addr: cli.sim.addr,
            ..SimConfig::default()
        };
        assert_eq!(SimConfig::from(cli.sim), want);
    }

    #[test]
    fn flags_and_aliases_parse() {
        let cli = Cli::try_parse_from([
            "sim",
            "--addr",
            "127.0.0.1:0",
            "--stats-delay",
            "250ms",
            "--error-rate-404",
            "0.1",
            "--rate-429",
            "0.2",
            "--error-rate-500",
            "0.05",
            "--rate-malformed",
            "0.01",
            "--rate-slow",
            "0.02",
            "--retry-after",
            "3s",
            "--slow-delay",
            "1s",
            "--byok-rate",
            "0.5",
            "--number-format",
            "exponent",
            "--seed",
            "42",
        ])
        .unwrap();
        let c = SimConfig::from(cli.sim);
        assert_eq!(c.stats_delay, Duration::from_millis(250));
        assert_eq!(c.rate_404.ppm(), 100_000);
        assert_eq!(c.rate_429.ppm(), 200_000);
        assert_eq!(c.byok_rate.ppm(), 500_000);
        assert_eq!(c.number_format, NumberFormat::Exponent);
        assert_eq!(c.seed, Some(42));
        assert!(Cli::try_parse_from(["sim", "--rate-500", "2"]).is_err());
    }
}
