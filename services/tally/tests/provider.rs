//! Connecting OpenRouter as an admin and an outside program do it: the
//! `tally` binary (`migrate`, `org create`, `key create`, `api`), the
//! OpenRouter simulator as its own process (`tally sim openrouter`), plain
//! HTTP, no internals. Every response body and every line the tally
//! processes logged (at debug level) is scanned for the keys handed to
//! tally.

use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use tally_testkit::secrets::SecretScanner;
use tokio::process::{Child, Command};

/// `TALLY_SECRETS_KEY` of this test (id `k1`, 32 bytes 0..31).
const KEK: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

struct World {
    _h: tally_tests::Harness,
    nats: String,
    db: String,
    logs: tempdir::Dir,
    sim: String,
    api: String,
    children: Vec<Child>,
    scanner: SecretScanner,
    http: reqwest::Client,
}

/// A request expected to be refused: key, `"METHOD /path"`, body, and
/// `"status code"` (e.g. `"403 forbidden_role"`).
type Refusal<'a> = (Option<&'a String>, &'a str, Option<Value>, &'a str);

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let p = std::env::temp_dir().join(format!(
                "tally-provider-test-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl World {
    fn tally(&self, log: &str) -> anyhow::Result<Command> {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tally"));
        let out = std::fs::File::create(self.logs.0.join(format!("{log}.out")))?;
        let err = std::fs::File::create(self.logs.0.join(format!("{log}.err")))?;
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TALLY_NATS_URL", &self.nats)
            .env("TALLY_DATABASE_URL", &self.db)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        Ok(c)
    }

    /// Runs `tally <args>` to completion; its one line of JSON output.
    async fn json_line(&mut self, log: &str, args: &[&str]) -> anyhow::Result<Value> {
        let mut c = self.tally(log)?;
        c.args(args);
        let status = tokio::time::timeout(Duration::from_secs(120), c.status()).await??;
        // Its standard output is the issued key itself: kept apart from
        // the logs that are scanned.
        let out_path = self.logs.0.join(format!("{log}.out"));
        let out = std::fs::read_to_string(&out_path)?;
        std::fs::rename(&out_path, self.logs.0.join(format!("{log}.result")))?;
        assert!(status.success(), "tally {args:?}: {out}");
        let line = out
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or_default();
        Ok(serde_json::from_str(line)?)
    }

    /// Sends a request; scans the answer for every watched secret.
    async fn call(
        &mut self,
        key: Option<&str>,
        method: Method,
        url: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let url = if url.starts_with("http") {
            url.to_owned()
        } else {
            format!("{}{url}", self.api)
        };
        let mut req = self.http.request(method.clone(), &url);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = format!("{:?}", resp.headers());
        let text = resp.text().await?;
        self.scanner
            .check(&format!("{method} {url} (headers)"), &headers)?;
        self.scanner.check(&format!("{method} {url}"), &text)?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// `GET path` with `key`.
    async fn get(&mut self, key: &str, path: &str) -> anyhow::Result<(u16, Value)> {
        self.call(Some(key), Method::GET, path, None).await
    }

    /// Sends `request` ("METHOD /path") with `key` and `body`.
    async fn send(
        &mut self,
        key: Option<&str>,
        request: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let (method, path) = request.split_once(' ').expect("METHOD /path");
        let method = Method::from_bytes(method.as_bytes())?;
        self.call(key, method, path, body).await
    }

    /// Sends each request and asserts its answer: the problem's status and
    /// code.
    async fn refusals(&mut self, cases: &[Refusal<'_>]) -> anyhow::Result<()> {
        for (key, request, body, want) in cases {
            let r = self
                .send(key.map(String::as_str), request, body.clone())
                .await?;
            let got = format!("{} {}", r.0, r.1["code"].as_str().unwrap_or("-"));
            assert_eq!(&got, want, "{request}: {}", r.1);
        }
        Ok(())
    }

    /// Every log file of the tally processes, scanned.
    fn scan_logs(&mut self) -> anyhow::Result<usize> {
        let mut lines = 0;
        for entry in std::fs::read_dir(&self.logs.0)? {
            let path = entry?.path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("sim.") || name.ends_with(".result") {
                // The simulator plays OpenRouter (it issued the keys); a
                // `.result` is the one-line answer that hands out a key.
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            lines += text.lines().count();
            self.scanner.check(&format!("log {name}"), &text)?;
        }
        Ok(lines)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.0.join(name)).unwrap_or_default()
    }
}

async fn wait_ready(url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(url).await {
            if r.status().as_u16() < 500 {
                return Ok(());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "{url} did not answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl World {
    /// A harness (NATS, Postgres) and the simulator running as its own
    /// process; the API's port chosen, not yet started.
    async fn with_sim() -> anyhow::Result<World> {
        let h = tally_tests::Harness::start().await?;
        let sim_port = tally_testkit::free_port()?;
        let api_port = tally_testkit::free_port()?;
        let mut w = World {
            nats: h.nats.url(),
            db: h.db.url().to_owned(),
            _h: h,
            logs: tempdir::Dir::new(),
            sim: format!("http://127.0.0.1:{sim_port}"),
            api: format!("http://127.0.0.1:{api_port}"),
            children: Vec::new(),
            scanner: SecretScanner::new(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
        };
        let mut sim = w.tally("sim")?;
        sim.args(["sim", "openrouter", "--addr", &w.sim["http://".len()..]]);
        w.children.push(sim.spawn()?);
        wait_ready(&format!("{}/api/v1/models", w.sim)).await?;
        Ok(w)
    }
}

async fn start() -> anyhow::Result<World> {
    let mut w = World::with_sim().await?;
    w.scanner.watch("TALLY_SECRETS_KEY", KEK);

    let mut m = w.tally("migrate")?;
    m.arg("migrate");
    assert!(m.status().await?.success(), "{}", w.log("migrate.err"));

    let mut api = w.tally("api")?;
    api.arg("api")
        .env("TALLY_HTTP_ADDR", &w.api["http://".len()..])
        .env("TALLY_SECRETS_KEY", KEK)
        .env("TALLY_PUBLIC_URL", &w.api)
        .env("TALLY_OPENROUTER_BASE_URL", format!("{}/api/v1", w.sim))
        .env("TALLY_OPENROUTER_AUTH_URL", format!("{}/auth", w.sim));
    w.children.push(api.spawn()?);
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{}/readyz", w.api))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        anyhow::ensure!(Instant::now() < deadline, "the API did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(w)
}

fn assert_code(got: &(u16, Value), status: u16, code: &str) {
    assert_eq!(
        (got.0, got.1["code"].as_str()),
        (status, Some(code)),
        "{}",
        got.1
    );
}

#[tokio::test]
async fn an_admin_connects_openrouter_and_the_key_never_comes_back() -> anyhow::Result<()> {
    let mut w = start().await?;
    let acme = w.json_line("org-acme", &["org", "create", "acme"]).await?;
    let admin = acme["key"].as_str().unwrap().to_owned();
    let globex = w
        .json_line("org-globex", &["org", "create", "globex"])
        .await?;
    let other = globex["key"].as_str().unwrap().to_owned();
    let member = w
        .json_line(
            "key-member",
            &["key", "create", "--org", "acme", "--role", "member"],
        )
        .await?;
    let member = member["key"].as_str().unwrap().to_owned();
    // The tally keys are secrets too: no log and no later answer holds them
    // (the scanner starts watching after the answers that issue them).
    w.scanner.watch("acme admin key", &admin);
    w.scanner.watch("acme member key", &member);
    w.scanner.watch("globex admin key", &other);

    // A key issued by "OpenRouter".
    let issued = w
        .http
        .post(format!("{}/sim/keys", w.sim))
        .json(&json!({"limit": "25"}))
        .send()
        .await?
        .json::<Value>()
        .await?;
    let or_key = issued["key"].as_str().unwrap().to_owned();
    let label = issued["label"].as_str().unwrap().to_owned();
    w.scanner.watch("acme's pasted OpenRouter key", &or_key);

    // Nothing connected yet.
    let r = w.get(&member, "/v1/providers/openrouter").await?;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["connected"], false, "{}", r.1);

    // A member cannot connect; a key OpenRouter does not know is refused.
    #[rustfmt::skip]
    let refused: &[Refusal] = &[
        (Some(&member), "PUT /v1/providers/openrouter", Some(json!({"api_key": or_key})), "403 forbidden_role"),
        (Some(&admin), "PUT /v1/providers/openrouter", Some(json!({"api_key": "sk-or-v1-never-issued-by-openrouter-0000"})), "422 provider_key_rejected"),
        (Some(&admin), "PUT /v1/providers/openrouter", Some(json!({"api_key": or_key, "nonsense": 1})), "422 unknown_field"),
    ];
    w.refusals(refused).await?;

    // Paste the key.
    let r = w
        .send(
            Some(&admin),
            "PUT /v1/providers/openrouter",
            Some(json!({"api_key": or_key, "byok_providers": ["Anthropic"]})),
        )
        .await?;
    assert_eq!(r.0, 200, "{}", r.1);
    let st = &r.1;
    assert_eq!(st["connected"], true, "{st}");
    assert_eq!(st["connected_via"], "api_key");
    assert_eq!(st["key_label"], label.as_str());
    assert_eq!(st["limit_remaining_usd"], "25");
    assert_eq!(st["byok_providers"], json!(["Anthropic"]));
    assert_eq!(st["models"]["count"], 3, "{st}");
    assert!(st["models"]["synced_at"].is_string() && st["models"]["error"].is_null());
    let r = w.get(&member, "/v1/providers/openrouter").await?;
    assert_eq!((r.0, &r.1["connected"]), (200, &json!(true)), "{}", r.1);

    // Models: the member reads them; prices as decimal strings.
    let r = w
        .send(Some(&member), "GET /v1/providers/openrouter/models", None)
        .await?;
    assert_eq!(r.0, 200, "{}", r.1);
    let models = r.1["models"].as_array().unwrap();
    assert_eq!(models.len(), 3, "{}", r.1);
    assert!(r.1["synced_at"].is_string());
    for m in models {
        assert!(
            m["id"].is_string() && m["capabilities"]["tools"].is_boolean(),
            "{m}"
        );
        assert!(
            m["pricing"]["prompt"].is_string() || m["pricing"]["prompt"].is_null(),
            "{m}"
        );
    }
    let r = w
        .send(
            Some(&admin),
            "POST /v1/providers/openrouter/models/sync",
            None,
        )
        .await?;
    assert_eq!((r.0, &r.1["count"]), (200, &json!(3)), "{}", r.1);
    #[rustfmt::skip]
    w.refusals(&[(Some(&member), "POST /v1/providers/openrouter/models/sync", None, "403 forbidden_role")]).await?;

    // Another organisation sees nothing of it.
    let r = w.get(&other, "/v1/providers/openrouter").await?;
    assert_eq!((r.0, &r.1["connected"]), (200, &json!(false)), "{}", r.1);
    let r = w
        .send(Some(&other), "GET /v1/providers/openrouter/models", None)
        .await?;
    assert_eq!((r.0, &r.1["models"]), (200, &json!([])), "{}", r.1);
    #[rustfmt::skip]
    let refused: &[Refusal] = &[
        (Some(&other), "GET /v1/providers/openrouter?org_id=acme", None, "404 org_not_found"),
        (Some(&other), "DELETE /v1/providers/openrouter", None, "404 provider_not_connected"),
    ];
    w.refusals(refused).await?;

    // Routing profiles: put, read back with the risk of its server tools.
    let profile = json!({
        "models": ["openai/gpt-4o-mini"],
        "provider": {"order": ["Anthropic"], "allow_fallbacks": false},
        "capacity": "byok_first",
        "presets": ["zdr-only"],
        "server_tools": ["web_search"]
    });
    let r = w
        .send(
            Some(&admin),
            "PUT /v1/agents/support-bot/routing",
            Some(profile.clone()),
        )
        .await?;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["risk"], "high", "{}", r.1);
    let r = w
        .send(Some(&member), "GET /v1/agents/support-bot/routing", None)
        .await?;
    assert_eq!(r.0, 200, "{}", r.1);
    for k in ["models", "provider", "capacity", "presets", "server_tools"] {
        assert_eq!(r.1[k], profile[k], "{k}: {}", r.1);
    }
    assert_eq!(
        (&r.1["risk"], &r.1["agent_id"], &r.1["org_id"]),
        (&json!("high"), &json!("support-bot"), &json!("acme"))
    );
    let r = w
        .send(
            Some(&admin),
            "PUT /v1/routing",
            Some(json!({"presets": ["no-data-collection"]})),
        )
        .await?;
    assert_eq!((r.0, &r.1["risk"]), (200, &json!("low")), "{}", r.1);
    for (body, code) in [
        (json!({"presets": ["zdr-onyl"]}), "unknown_preset"),
        (json!({"presets": ["max-price:-1"]}), "invalid_preset"),
        (
            json!({"capacity": "byok_only", "byok_providers": []}),
            "byok_no_providers",
        ),
        (
            json!({"server_tools": ["web search"]}),
            "invalid_server_tool",
        ),
        (json!({"capcity": "shared"}), "unknown_field"),
    ] {
        let r = w
            .send(Some(&admin), "PUT /v1/routing", Some(body.clone()))
            .await?;
        assert_code(&r, 422, code);
    }
    #[rustfmt::skip]
    let refused: &[Refusal] = &[
        (Some(&member), "PUT /v1/routing", Some(json!({"presets": []})), "403 forbidden_role"),
        (Some(&other), "GET /v1/agents/support-bot/routing", None, "404 routing_profile_not_found"),
    ];
    w.refusals(refused).await?;
    let r = w.send(Some(&admin), "DELETE /v1/routing", None).await?;
    assert_eq!((r.0, &r.1["deleted"]), (200, &json!(true)), "{}", r.1);
    #[rustfmt::skip]
    w.refusals(&[(Some(&member), "GET /v1/routing", None, "404 routing_profile_not_found")]).await?;

    // Disconnect: the key is gone, the catalog too.
    #[rustfmt::skip]
    w.refusals(&[(Some(&member), "DELETE /v1/providers/openrouter", None, "403 forbidden_role")]).await?;
    let r = w
        .send(Some(&admin), "DELETE /v1/providers/openrouter", None)
        .await?;
    assert_eq!((r.0, &r.1["connected"]), (200, &json!(false)), "{}", r.1);
    #[rustfmt::skip]
    w.refusals(&[(Some(&admin), "POST /v1/providers/openrouter/models/sync", None, "409 provider_not_connected")]).await?;

    // --- Connect with OpenRouter (OAuth PKCE) ---
    #[rustfmt::skip]
    w.refusals(&[(Some(&member), "POST /v1/providers/openrouter/oauth/start", None, "403 forbidden_role")]).await?;
    let r = w
        .send(
            Some(&admin),
            "POST /v1/providers/openrouter/oauth/start",
            None,
        )
        .await?;
    assert_eq!(r.0, 200, "{}", r.1);
    assert!(r.1["expires_at"].is_string(), "{}", r.1);
    let authorize = r.1["authorize_url"].as_str().unwrap().to_owned();
    assert!(
        authorize.starts_with(&format!("{}/auth?callback_url=", w.sim)),
        "{authorize}"
    );
    assert!(
        authorize.contains("code_challenge_method=S256"),
        "{authorize}"
    );
    // The admin's browser at OpenRouter: approved, sent back with a code.
    let resp = w.http.get(&authorize).send().await?;
    assert_eq!(resp.status().as_u16(), 302);
    let callback = resp.headers()["location"].to_str()?.to_owned();
    assert!(
        callback.starts_with(&format!(
            "{}/v1/providers/openrouter/oauth/callback?state=",
            w.api
        )) && callback.contains("&code="),
        "{callback}"
    );
    let state = callback
        .split("state=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let code = callback.split("code=").nth(1).unwrap().to_owned();
    w.scanner.watch("OAuth state", &state);
    w.scanner.watch("OAuth code", &code);
    // The browser comes back without any tally key.
    let r = w.call(None, Method::GET, &callback, None).await?;
    assert_eq!(r.0, 200, "{}", r.1);
    let page = r.1.as_str().unwrap();
    assert!(
        page.contains("OpenRouter connected") && page.contains("acme"),
        "{page}"
    );
    let r = w.get(&member, "/v1/providers/openrouter").await?;
    assert_eq!(r.0, 200);
    let connected = r.1.clone();
    assert_eq!(connected["connected"], true, "{connected}");
    assert_eq!(connected["connected_via"], "oauth", "{connected}");
    assert_eq!(connected["models"]["count"], 3, "{connected}");
    let oauth_label = connected["key_label"].as_str().unwrap().to_owned();
    assert!(oauth_label.starts_with("sk-or-v1-"), "{connected}");

    // Replayed: a clear page, nothing stored (the connection is unchanged).
    let r = w.call(None, Method::GET, &callback, None).await?;
    assert_eq!(r.0, 400, "{}", r.1);
    assert!(
        r.1.as_str().unwrap().contains("oauth_state_used"),
        "{}",
        r.1
    );
    // Forged or foreign: unknown.
    let forged = format!(
        "{}/v1/providers/openrouter/oauth/callback?state=forged-state-0123456789&code={code}",
        w.api
    );
    let r = w.call(None, Method::GET, &forged, None).await?;
    assert_eq!(r.0, 400, "{}", r.1);
    assert!(
        r.1.as_str().unwrap().contains("oauth_state_unknown"),
        "{}",
        r.1
    );
    let r = w
        .send(
            None,
            "GET /v1/providers/openrouter/oauth/callback?code=abc",
            None,
        )
        .await?;
    assert_eq!(r.0, 400);
    assert!(r.1.as_str().unwrap().contains("oauth_state_missing"));
    // A state of globex's flow cannot connect acme, and a denied flow
    // uses its state up.
    let r = w
        .send(
            Some(&other),
            "POST /v1/providers/openrouter/oauth/start",
            None,
        )
        .await?;
    assert_eq!(r.0, 200, "{}", r.1);
    let globex_auth = r.1["authorize_url"].as_str().unwrap().to_owned();
    w.http
        .post(format!("{}/sim/oauth", w.sim))
        .json(&json!({"deny": true}))
        .send()
        .await?
        .error_for_status()?;
    let denied = w.http.get(&globex_auth).send().await?;
    let denied = denied.headers()["location"].to_str()?.to_owned();
    assert!(denied.contains("error=access_denied"), "{denied}");
    let r = w.call(None, Method::GET, &denied, None).await?;
    assert_eq!(r.0, 400, "{}", r.1);
    assert!(r.1.as_str().unwrap().contains("oauth_denied"), "{}", r.1);
    let again = format!("{}&code=late-code", denied.split("&error=").next().unwrap());
    let r = w.call(None, Method::GET, &again, None).await?;
    assert!(
        r.1.as_str().unwrap().contains("oauth_state_used"),
        "{}",
        r.1
    );
    let r = w.get(&other, "/v1/providers/openrouter").await?;
    assert_eq!(r.1["connected"], false, "{}", r.1);
    // A flow started with an admin key that is revoked before the browser
    // comes back connects nothing.
    w.http
        .post(format!("{}/sim/oauth", w.sim))
        .json(&json!({"deny": false}))
        .send()
        .await?
        .error_for_status()?;
    let r = w
        .send(
            Some(&admin),
            "POST /v1/keys",
            Some(json!({"role": "admin", "name": "leaving"})),
        )
        .await?;
    assert_eq!(r.0, 201, "{}", r.1);
    let leaving = r.1["key"].as_str().unwrap().to_owned();
    let leaving_id = r.1["id"].as_str().unwrap().to_owned();
    w.scanner.watch("leaving admin key", &leaving);
    let r = w
        .send(
            Some(&leaving),
            "POST /v1/providers/openrouter/oauth/start",
            None,
        )
        .await?;
    assert_eq!(r.0, 200, "{}", r.1);
    let auth = r.1["authorize_url"].as_str().unwrap().to_owned();
    let r = w
        .call(
            Some(&admin),
            Method::DELETE,
            &format!("/v1/keys/{leaving_id}"),
            None,
        )
        .await?;
    assert_eq!(r.0, 200, "{}", r.1);
    let back = w.http.get(&auth).send().await?;
    let back = back.headers()["location"].to_str()?.to_owned();
    let r = w.call(None, Method::GET, &back, None).await?;
    assert_eq!(r.0, 400, "{}", r.1);
    assert!(
        r.1.as_str().unwrap().contains("oauth_admin_revoked"),
        "{}",
        r.1
    );

    let r = w.get(&member, "/v1/providers/openrouter").await?;
    assert_eq!(r.1, connected, "nothing changed for acme");

    // Every tally process's log, at debug level, holds none of the secrets.
    w.children[1].start_kill()?;
    let _ = w.children[1].wait().await;
    let lines = w.scan_logs()?;
    assert!(lines > 20, "the logs were captured ({lines} lines)");
    assert!(
        w.log("api.out")
            .contains("periodic model discovery scheduled")
            || w.log("api.err")
                .contains("periodic model discovery scheduled"),
        "the API schedules the model sync"
    );
    assert!(w.scanner.scanned() > 60, "{}", w.scanner.scanned());
    Ok(())
}

#[tokio::test]
async fn without_a_secrets_key_nothing_is_stored() -> anyhow::Result<()> {
    let mut w = World::with_sim().await?;
    let acme = w.json_line("org", &["org", "create", "acme"]).await?;
    let admin = acme["key"].as_str().unwrap().to_owned();
    let mut api = w.tally("api")?;
    api.arg("api")
        .env("TALLY_HTTP_ADDR", &w.api["http://".len()..])
        .env("TALLY_OPENROUTER_BASE_URL", format!("{}/api/v1", w.sim));
    w.children.push(api.spawn()?);
    wait_ready(&format!("{}/readyz", w.api)).await?;
    let issued = w
        .http
        .post(format!("{}/sim/keys", w.sim))
        .json(&json!({}))
        .send()
        .await?
        .json::<Value>()
        .await?;
    let key = issued["key"].as_str().unwrap().to_owned();
    w.scanner.watch("pasted key", &key);
    #[rustfmt::skip]
    let refused: &[Refusal] = &[
        (Some(&admin), "PUT /v1/providers/openrouter", Some(json!({"api_key": key})), "503 secrets_key_missing"),
        (Some(&admin), "POST /v1/providers/openrouter/oauth/start", None, "503 secrets_key_missing"),
    ];
    w.refusals(refused).await?;
    let r = w.get(&admin, "/v1/providers/openrouter").await?;
    assert_eq!(r.1["connected"], false, "{}", r.1);
    let log = format!("{}{}", w.log("api.out"), w.log("api.err"));
    assert!(log.contains("TALLY_SECRETS_KEY is not set"), "{log}");
    w.scan_logs()?;
    Ok(())
}
