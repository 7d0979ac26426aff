//! A private PostgreSQL server for one test, which the test may crash and
//! restart without touching the machine's shared server.
//!
//! `initdb` makes a cluster in a fresh temporary directory with the server
//! binaries installed under `/usr/lib/postgresql/<version>/bin` (the newest
//! version; `$TALLY_PG_BIN_DIR` overrides), and `pg_ctl` runs it on a free
//! loopback port with default durability (`fsync`, `synchronous_commit`).
//! PostgreSQL refuses to run as root, so under root every server command
//! runs as the `postgres` user (else `nobody`) through `runuser`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

/// Environment variable naming the directory with `initdb`, `pg_ctl`, `postgres`.
pub const PG_BIN_DIR_ENV: &str = "TALLY_PG_BIN_DIR";

/// A private PostgreSQL server, stopped (immediately) and deleted on drop.
#[derive(Debug)]
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    run_as: Option<String>,
}

fn find_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(PG_BIN_DIR_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: install PostgreSQL (bash deploy/setup.sh)")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, b)| b)
        .context("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn user_exists(name: &str) -> bool {
    Command::new("id")
        .arg(name)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

impl PrivatePostgres {
    /// Creates and starts a cluster with a trusted superuser `tally`.
    pub fn start() -> anyhow::Result<PrivatePostgres> {
        let bin = find_bin_dir()?;
        let dir = std::env::temp_dir().join(format!("tally-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let run_as = if is_root() {
            let user = if user_exists("postgres") {
                "postgres"
            } else {
                "nobody"
            };
            let status = Command::new("chown")
                .arg(format!("{user}:"))
                .arg(&dir)
                .status()?;
            if !status.success() {
                bail!("chown {user} {} failed", dir.display());
            }
            Some(user.to_owned())
        } else {
            None
        };
        let port = tally_testkit::free_port()?;
        let pg = PrivatePostgres {
            bin,
            dir,
            port,
            run_as,
        };
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data().display().to_string(),
                "-U",
                "tally",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
        )?;
        pg.start_server()?;
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let exe = self.bin.join(tool);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd
            .args(args)
            .current_dir(&self.dir)
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        if !out.status.success() {
            bail!(
                "{tool} {args:?} failed ({}):\n{}{}\nserver log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        Ok(())
    }

    fn start_server(&self) -> anyhow::Result<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-l",
                &self.dir.join("server.log").display().to_string(),
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
    }

    fn stop_immediate(&self) -> anyhow::Result<()> {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
    }

    /// Crashes the server (`pg_ctl stop -m immediate`: no checkpoint, every
    /// connection cut) and starts it again on the same port; it recovers
    /// from its write-ahead log.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.stop_immediate()?;
        self.start_server()
    }

    /// Stops the server (immediately) without starting it again.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.stop_immediate()
    }

    /// Starts a stopped server again.
    pub fn start_again(&self) -> anyhow::Result<()> {
        self.start_server()
    }

    /// URL of database `db` as the superuser `tally`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://tally@127.0.0.1:{}/{db}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.stop_immediate();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
