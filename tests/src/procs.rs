//! tally as an operator runs it: the built `tally` binary in separate
//! processes (each service on its own, killable with SIGKILL and started
//! again), `promtool`, and reading metric names out of PromQL.
//!
//! # Where the binaries come from
//!
//! * `tally`: `$TALLY_BIN` when set; otherwise this workspace's `tally`
//!   binary next to the running test binary: used as it is when it is newer
//!   than every source file (`cargo test --workspace` builds it), else built
//!   first (`cargo build -p tally --bin tally`), so a test never runs a
//!   stale one.
//! * `promtool`: `$TALLY_PROMTOOL_BIN`, else `deploy/.local/bin/promtool`
//!   (installed by `deploy/setup.sh` from the distribution's `prometheus`
//!   package), else `promtool` on `PATH`. Missing, the tests that need it
//!   fail and say how to install it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::process::{Child, Command};

/// Environment variable naming a prebuilt `tally` binary.
pub const TALLY_BIN_ENV: &str = "TALLY_BIN";
/// Environment variable naming the `promtool` binary.
pub const PROMTOOL_BIN_ENV: &str = "TALLY_PROMTOOL_BIN";

/// The workspace root (where `deploy/` lives).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The `tally` binary (see the module docs). Builds it once per test process.
pub fn tally_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| locate_tally().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn locate_tally() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os(TALLY_BIN_ENV).filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("{TALLY_BIN_ENV}={} does not name a file", bin.display());
        }
        return Ok(bin);
    }
    // The test binary is <target>/<profile>/deps/<name>-<hash>.
    let exe = std::env::current_exe().context("locating the test binary")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test binary is not in <target>/<profile>/deps")?
        .to_path_buf();
    let target_dir = profile_dir
        .parent()
        .context("the test binary is not in <target>/<profile>/deps")?;
    // `cargo test --workspace` has just built it: use it when it is newer
    // than every source file (a build with this package's narrower feature
    // set would compile the dependencies again).
    let bin = profile_dir.join("tally");
    if let Ok(built) = std::fs::metadata(&bin).and_then(|m| m.modified()) {
        if newest_source(&workspace_root()).is_some_and(|newest| newest <= built) {
            return Ok(bin);
        }
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    // The environment cargo gives a running test (CARGO_PKG_*, CARGO_MANIFEST_DIR,
    // library paths, ...) would make this build look different from the one
    // that produced the binary and rebuild everything; pass only what a
    // shell would.
    build.env_clear();
    for (k, v) in std::env::vars_os() {
        let k_str = k.to_string_lossy();
        let keep = matches!(
            k_str.as_ref(),
            "PATH" | "HOME" | "USER" | "CARGO_HOME" | "RUSTUP_HOME" | "RUSTUP_TOOLCHAIN" | "TMPDIR"
        ) || k_str.starts_with("CARGO_REGISTRIES_")
            || k_str == "RUSTFLAGS"
            || k_str.starts_with("CARGO_PROFILE_")
            || k_str.starts_with("CARGO_BUILD_");
        if keep {
            build.env(&k, &v);
        }
    }
    build
        .current_dir(workspace_root())
        .args([
            "build",
            "-q",
            "-p",
            "tally",
            "--bin",
            "tally",
            "--target-dir",
        ])
        .arg(target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build
        .status()
        .context("running cargo build -p tally (set TALLY_BIN to a built tally binary instead)")?;
    if !status.success() {
        bail!("cargo build -p tally failed ({status})");
    }
    if !bin.is_file() {
        bail!("cargo build -p tally left no binary at {}", bin.display());
    }
    Ok(bin)
}

/// The newest modification time of the workspace's manifests and sources
/// (`Cargo.toml`, `Cargo.lock`, everything under `crates/`, `services/`).
fn newest_source(root: &Path) -> Option<std::time::SystemTime> {
    fn walk(dir: &Path, newest: &mut Option<std::time::SystemTime>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                if path.file_name().is_some_and(|n| n != "target") {
                    walk(&path, newest);
                }
            } else if let Ok(m) = meta.modified() {
                if newest.is_none_or(|n| m > n) {
                    *newest = Some(m);
                }
            }
        }
    }
    let mut newest = None;
    for f in ["Cargo.toml", "Cargo.lock"] {
        if let Ok(m) = std::fs::metadata(root.join(f)).and_then(|m| m.modified()) {
            if newest.is_none_or(|n| m > n) {
                newest = Some(m);
            }
        }
    }
    walk(&root.join("crates"), &mut newest);
    walk(&root.join("services"), &mut newest);
    newest
}

/// The `promtool` binary (see the module docs).
pub fn promtool_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os(PROMTOOL_BIN_ENV).filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        if bin.is_file() {
            return Ok(bin);
        }
        bail!("{PROMTOOL_BIN_ENV}={} does not name a file", bin.display());
    }
    let local = workspace_root().join("deploy/.local/bin/promtool");
    if local.is_file() {
        return Ok(local);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("promtool");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "promtool not found (not in ${PROMTOOL_BIN_ENV}, not at {}, not on PATH): \
         run `bash deploy/setup.sh`, which unpacks it from the distribution's prometheus package",
        local.display()
    )
}

/// Runs promtool with `args` (and `stdin`), returning (exit code, stdout + stderr).
pub async fn promtool(args: &[&str], stdin: Option<&[u8]>) -> anyhow::Result<(i32, String)> {
    use tokio::io::AsyncWriteExt as _;
    let mut cmd = Command::new(promtool_bin()?);
    cmd.args(args)
        .current_dir(workspace_root())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("spawning promtool")?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input).await?;
        drop(pipe);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .context("promtool took over 120 s")??;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.code().unwrap_or(-1), text))
}

/// One `tally <subcommand>` process. It is SIGKILLed when dropped.
pub struct TallyProcess {
    name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl TallyProcess {
    /// Starts `tally <args>` with exactly `env` (plus `PATH`), logging stdout
    /// and stderr to `<log_dir>/<name>.log` (appended across restarts).
    pub fn start(
        name: &str,
        args: &[&str],
        env: &[(&str, String)],
        log_dir: &Path,
    ) -> anyhow::Result<TallyProcess> {
        let mut p = TallyProcess {
            name: name.to_owned(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            log: log_dir.join(format!("{name}.log")),
            child: None,
            starts: 0,
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut cmd = Command::new(tally_bin()?);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        self.child = Some(
            cmd.spawn()
                .with_context(|| format!("spawning tally {}", self.name))?,
        );
        self.starts += 1;
        Ok(())
    }

    /// SIGKILLs the process (a crash: nothing in flight completes) and waits.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .await
                .with_context(|| format!("killing {}", self.name))?;
        }
        Ok(())
    }

    /// Kills it (if running) and starts it again with the same arguments.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        self.spawn()
    }

    /// Fails when the process exited on its own (with its log).
    pub fn assert_running(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "tally {} exited with {status}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
        }
        Ok(())
    }

    /// How many times it was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// Its log so far (last 8 KiB).
    pub fn log_text(&self) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let start = bytes.len().saturating_sub(8192);
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }
}

/// A `TALLY_SECRETS_KEY` for tests (32 zero bytes).
pub const TEST_SECRETS_KEY: &str = "test:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

/// Runs `tally <args>` to completion with exactly `env` (plus `PATH`);
/// returns (exit code, stdout, stderr).
pub async fn tally_output(
    args: &[&str],
    env: &[(&str, String)],
) -> anyhow::Result<(i32, String, String)> {
    let mut cmd = Command::new(tally_bin()?);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .context("tally took over 120 s")??;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// GETs `url` and returns the body of a 2xx answer.
pub async fn get_text(url: &str) -> anyhow::Result<String> {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body = resp.text().await?;
    if !status.is_success() {
        bail!("GET {url}: {status}: {body}");
    }
    Ok(body)
}

/// Waits until `url` answers 2xx (at most `timeout`).
pub async fn wait_http(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match get_text(url).await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e.context(format!("{url} not up after {timeout:?}")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The metric names with samples in a Prometheus text exposition
/// (`_bucket`, `_sum`, `_count` of histograms and `_total` of counters are
/// the names queries use, and the ones exported).
pub fn exported_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            l.split(|c: char| c == '{' || c.is_whitespace())
                .next()
                .map(str::to_owned)
        })
        .collect()
}

/// PromQL words that are not metric names (aggregations may be followed by
/// `by (...)` rather than their parenthesis).
const PROMQL_KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
    "Inf",
    "NaN",
];

/// The metric names a PromQL expression selects. Strings, label matchers,
/// ranges, grouping label lists, function names and keywords are not names.
pub fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    // Blank out strings, {...} matchers and [...] ranges.
    let mut cleaned = String::with_capacity(expr.len());
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                let quote = c;
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == quote {
                        break;
                    }
                }
                cleaned.push(' ');
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                for d in chars.by_ref() {
                    if d == close {
                        break;
                    }
                }
                cleaned.push(' ');
            }
            _ => cleaned.push(c),
        }
    }
    let bytes: Vec<char> = cleaned.chars().collect();
    let is_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_part = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Set after a grouping keyword: the next parenthesised list holds labels.
    let mut grouping = false;
    let mut in_label_list = false;
    while i < bytes.len() {
        let c = bytes[i];
        if c == '(' {
            in_label_list = grouping;
            grouping = false;
            i += 1;
            continue;
        }
        if c == ')' {
            in_label_list = false;
            i += 1;
            continue;
        }
        let prev_ok =
            i == 0 || !(is_part(bytes[i - 1]) || bytes[i - 1] == '$' || bytes[i - 1] == '.');
        if is_start(c) && prev_ok {
            let start = i;
            while i < bytes.len() && is_part(bytes[i]) {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            let mut j = i;
            while j < bytes.len() && bytes[j].is_whitespace() {
                j += 1;
            }
            let is_call = j < bytes.len() && bytes[j] == '(';
            if matches!(
                word.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                grouping = true;
                continue;
            }
            if in_label_list || is_call || PROMQL_KEYWORDS.contains(&word.as_str()) {
                continue;
            }
            names.insert(word);
            continue;
        }
        i += 1;
    }
    names
}

/// The `expr:` values of a Prometheus rules file (plain and `|`/`>` blocks).
pub fn rule_expressions(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(rest) = trimmed.strip_prefix("expr:") {
            let rest = rest.trim();
            if rest.starts_with('|') || rest.starts_with('>') {
                let mut block = String::new();
                i += 1;
                while i < lines.len() {
                    let l = lines[i];
                    let t = l.trim_start();
                    if !t.is_empty() && l.len() - t.len() <= indent {
                        break;
                    }
                    block.push_str(t);
                    block.push('\n');
                    i += 1;
                }
                out.push(block);
                continue;
            }
            // A plain scalar may continue on more-indented lines.
            let mut value = rest.to_owned();
            i += 1;
            while i < lines.len() {
                let l = lines[i];
                let t = l.trim_start();
                if t.is_empty() || l.len() - t.len() <= indent {
                    break;
                }
                value.push(' ');
                value.push_str(t);
                i += 1;
            }
            out.push(value);
            continue;
        }
        i += 1;
    }
    out
}

/// Every `expr` string anywhere in a Grafana dashboard.
pub fn dashboard_expressions(dashboard: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    if k == "expr" {
                        if let Some(s) = v.as_str() {
                            out.push(s.to_owned());
                        }
                    } else {
                        walk(v, out);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(dashboard, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        promql_metric_names(expr).into_iter().collect()
    }

    #[test]
    fn metric_names_are_read_out_of_promql() {
        assert_eq!(
            names(r#"sum by (reason) (increase(tally_a_total{reason="x"}[10m])) > 0"#),
            ["tally_a_total"]
        );
        assert_eq!(
            names(
                "histogram_quantile(0.99, sum by (le) (rate(tally_b_seconds_bucket[$__rate_interval])))"
            ),
            ["tally_b_seconds_bucket"]
        );
        assert_eq!(
            names(
                r#"label_replace(a unless a offset 10m, "service", "p", "", "") or on (x) b and bool c"#
            ),
            ["a", "b", "c"]
        );
        assert_eq!(
            names("(sum(rate(x_total[5m])) or vector(0)) == 0 and max(up) > 1e3"),
            ["up", "x_total"]
        );
        assert_eq!(names("topk(10, sum without (instance) (m)) * 3600"), ["m"]);
    }

    #[test]
    fn rule_expressions_are_read_plain_and_as_blocks() {
        let yaml = "groups:\n  - rules:\n      - alert: A\n        expr: up == 0\n        for: 1m\n      - alert: B\n        expr: |\n          a\n          or b\n        labels: {}\n      - alert: C\n        expr: x >\n          1\n";
        assert_eq!(rule_expressions(yaml), ["up == 0", "a\nor b\n", "x > 1"]);
    }

    #[test]
    fn exported_names_come_from_samples() {
        let text = "# HELP a_total x\n# TYPE a_total counter\na_total{k=\"v\"} 1\nh_bucket{le=\"1\"} 0\nh_sum 0\n";
        let n: Vec<_> = exported_names(text).into_iter().collect();
        assert_eq!(n, ["a_total", "h_bucket", "h_sum"]);
    }
}
