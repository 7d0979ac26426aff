//! The simulator, OpenRouter's own SDK and tally's client agree.
//!
//! Starts one simulator per scenario (plain, BYOK, hidden cost, cut
//! streams, mid-stream errors, 402, 502, 524, 529) and runs
//! `tests/conformance/sdk_check.py` with the Python of the project venv
//! (`deploy/.local/venv`, where `deploy/setup.sh` installs the pinned
//! `openrouter` and `openai` SDKs). The script drives every endpoint
//! through both SDKs and fails on any validation error, any field the SDK
//! silently drops and any cost that comes back unset; it saves every raw
//! reply with the exact decimal text of its cost fields. This test then
//! parses the same bytes with tally's client and requires every cost field
//! to be the same number, digit for digit, and the `/generation`
//! statistics to agree with the usage of the same generation.
//!
//! Without the venv's Python (or without the SDKs in it) the test fails
//! and says to run `bash deploy/setup.sh`: it never skips silently.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use reqwest::header::HeaderMap;
use serde_json::Value;
use tally_money::{Cost, Usd};
use tally_openrouter::{
    chat_reply_from_body, generation_error, ChatStreamAccumulator, GenerationStats, ModelInfo,
    ResponseUsage, ResponsesReply, SseParser, StreamAccumulator,
};
use tally_sim::{Fraction, RunningSim, SimConfig, Simulator};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The Python that has the pinned SDKs: `TALLY_SDK_PYTHON`, else the
/// project venv's.
fn sdk_python() -> PathBuf {
    let path = std::env::var_os("TALLY_SDK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("deploy/.local/venv/bin/python3"));
    assert!(
        path.exists(),
        "the SDK conformance test needs {} with the openrouter and openai SDKs: \
         run `bash deploy/setup.sh` (or set TALLY_SDK_PYTHON)",
        path.display()
    );
    path
}

async fn sim(cfg: SimConfig) -> RunningSim {
    Simulator::start(SimConfig {
        seed: Some(14),
        ..cfg
    })
    .await
    .expect("simulator starts")
}

fn d(text: &str) -> Usd {
    tally_money::parse_json_number(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// The cost fields of a usage, under the report's names.
fn usage_costs(u: &ResponseUsage, chat: bool) -> HashMap<String, Option<Cost>> {
    let (input, output) = if chat {
        (
            "cost_details.upstream_inference_prompt_cost",
            "cost_details.upstream_inference_completions_cost",
        )
    } else {
        (
            "cost_details.upstream_inference_input_cost",
            "cost_details.upstream_inference_output_cost",
        )
    };
    HashMap::from([
        ("cost".to_owned(), u.cost),
        (
            "cost_details.upstream_inference_cost".to_owned(),
            u.upstream_inference_cost,
        ),
        (input.to_owned(), u.upstream_inference_input_cost),
        (output.to_owned(), u.upstream_inference_output_cost),
    ])
}

fn same_costs(case: &str, report: &Value, ours: &HashMap<String, Option<Cost>>) {
    let theirs = report.as_object().expect("costs object");
    for (name, exact) in theirs {
        let want = exact.as_str().map(d);
        let got = ours
            .get(name)
            .unwrap_or_else(|| panic!("{case}: tally does not read {name}"));
        assert_eq!(got.map(Cost::usd), want, "{case}: {name}");
    }
    if !theirs.is_empty() {
        for name in ours.keys() {
            if ours[name].is_some() {
                assert!(theirs.contains_key(name), "{case}: {name} not in the reply");
            }
        }
    }
}

fn sse_fold(text: &str, mut f: impl FnMut(&str)) {
    let mut p = SseParser::new();
    for ev in p.push(text.as_bytes()).expect("sse") {
        f(&ev.data);
    }
}

/// A scenario of the script: its name and how its simulator differs from
/// an ephemeral one.
type Scenario = (&'static str, fn(&mut SimConfig));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_sdk_and_tally_agree_on_every_reply_and_cost() {
    let python = sdk_python();
    // One simulator per scenario of the script, under the script's names.
    let scenarios: [Scenario; 9] = [
        ("plain", |_| {}),
        ("byok", |c| c.byok_rate = Fraction::ONE),
        ("missing_cost", |c| c.gen_missing_cost_rate = Fraction::ONE),
        ("abort", |c| c.gen_abort_rate = Fraction::ONE),
        ("mid_stream", |c| {
            c.gen_mid_stream_error_rate = Fraction::ONE
        }),
        ("e402", |c| c.gen_rate_402 = Fraction::ONE),
        ("e502", |c| c.gen_rate_502 = Fraction::ONE),
        ("e524", |c| c.gen_rate_524 = Fraction::ONE),
        ("e529", |c| c.gen_rate_529 = Fraction::ONE),
    ];
    let mut config = serde_json::json!({"key": tally_sim::TEST_KEY});
    let mut sims = Vec::with_capacity(scenarios.len());
    for (name, set) in scenarios {
        let mut cfg = SimConfig::ephemeral();
        set(&mut cfg);
        let running = sim(cfg).await;
        config[name] = running.base_url().into();
        sims.push(running);
    }
    let dir = std::env::temp_dir().join(format!("tally-sdk-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let out_dir = dir.join("replies");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/sdk_check.py");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(&config_path)
        .arg(&out_dir)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "the SDKs are not installed in {}: run `bash deploy/setup.sh`\n{stderr}",
        python.display()
    );
    assert!(
        out.status.success(),
        "the SDKs refuse simulator replies:\n{stdout}\n{stderr}"
    );

    // tally's client on the very same bytes.
    let report: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("report.json")).unwrap()).unwrap();
    let entries = report["entries"].as_array().unwrap();
    let mut usages: HashMap<String, (String, Option<ResponseUsage>, ResponsesReply)> =
        HashMap::new();
    let mut checked = 0;
    for e in entries {
        let case = e["case"].as_str().unwrap();
        let kind = e["kind"].as_str().unwrap();
        let text = std::fs::read_to_string(out_dir.join(e["file"].as_str().unwrap())).unwrap();
        let gid = e["generation_id"].as_str().unwrap_or("");
        let expect = e["expect"].as_str().unwrap_or("usage");
        let reply = match kind {
            "chat" => Some(chat_reply_from_body(gid, text.as_bytes()).unwrap()),
            "responses" => Some(ResponsesReply::from_body(gid, text.as_bytes()).unwrap()),
            "chat_stream" => {
                let mut acc = ChatStreamAccumulator::new(gid);
                sse_fold(&text, |data| acc.event(data).unwrap());
                Some(acc.finish().unwrap())
            }
            "responses_stream" => {
                let mut acc = StreamAccumulator::new(gid);
                sse_fold(&text, |data| acc.event(data).unwrap());
                Some(acc.finish().unwrap())
            }
            "generation" => {
                let stats = GenerationStats::from_reply_body(text.as_bytes()).unwrap();
                let raw: Value = serde_json::from_str(&text).unwrap();
                let ours = HashMap::from([
                    ("total_cost".to_owned(), Some(stats.total_cost)),
                    ("usage".to_owned(), stats.usage),
                    (
                        "upstream_inference_cost".to_owned(),
                        stats.upstream_inference_cost,
                    ),
                ]);
                same_costs(case, &e["costs"], &ours);
                // The statistics tell the same story as the reply's usage.
                let (origin, usage, served) = &usages[gid];
                let data = &raw["data"];
                assert_eq!(data["streamed"], origin.contains("stream"), "{case}");
                assert_eq!(data["api_type"], "completions", "{case}");
                if served.aborted {
                    assert_eq!(stats.cancelled, Some(true), "{case}");
                    assert_eq!(data["finish_reason"], Value::Null, "{case}");
                } else if served.status.as_deref() == Some("failed") {
                    assert_eq!(data["finish_reason"], "error", "{case}");
                    assert_eq!(stats.cancelled, Some(false), "{case}");
                } else {
                    assert_ne!(data["finish_reason"], "error", "{case}");
                }
                if let Some(u) = usage {
                    assert_eq!(stats.native_tokens_cached, u.cached_tokens, "{case}");
                    assert_eq!(stats.native_tokens_reasoning, u.reasoning_tokens, "{case}");
                    assert_eq!(stats.native_tokens_prompt, Some(u.input_tokens), "{case}");
                    assert_eq!(stats.is_byok, u.is_byok, "{case}");
                    if let Some(cost) = u.cost {
                        assert_eq!(stats.total_cost, cost, "{case}");
                        assert_eq!(stats.upstream_inference_cost, u.upstream_inference_cost);
                        assert_eq!(stats.actual_cost().ok(), u.actual_cost(), "{case}");
                    }
                }
                checked += 1;
                None
            }
            "models" => {
                let models = ModelInfo::list_from_reply_body(text.as_bytes()).unwrap();
                assert!(models.len() >= 3, "{case}");
                checked += 1;
                None
            }
            "error" => {
                let status = u16::try_from(e["status"].as_u64().unwrap()).unwrap();
                let err = generation_error(status, &HeaderMap::new(), text.as_bytes());
                let code = match status {
                    402 => "payment_required",
                    502 => "bad_gateway",
                    524 => "edge_timeout",
                    529 => "provider_overloaded",
                    other => panic!("unexpected status {other}"),
                };
                assert_eq!(err.code(), code, "{case}");
                assert_eq!(err.is_retryable(), status != 402, "{case}");
                checked += 1;
                None
            }
            _ => {
                checked += 1;
                None
            }
        };
        let Some(reply) = reply else { continue };
        checked += 1;
        assert_eq!(reply.generation_id, gid, "{case}");
        match expect {
            "abort" => {
                assert!(reply.aborted, "{case}");
                assert_eq!(reply.usage, None, "{case}");
            }
            "error" => {
                assert!(!reply.aborted, "{case}");
                assert_eq!(reply.status.as_deref(), Some("failed"), "{case}");
                assert!(reply.error.is_some(), "{case}");
                assert_eq!(reply.usage, None, "{case}");
            }
            _ => {
                let u = reply
                    .usage
                    .as_ref()
                    .unwrap_or_else(|| panic!("{case}: no usage"));
                same_costs(case, &e["costs"], &usage_costs(u, kind.starts_with("chat")));
                if case.contains("missing_cost") {
                    assert_eq!(u.actual_cost(), None, "{case}");
                } else {
                    let actual = u
                        .actual_cost()
                        .unwrap_or_else(|| panic!("{case}: no actual"));
                    let upstream = u.upstream_inference_cost.unwrap();
                    // The parts of the provider's bill add up to it.
                    assert_eq!(
                        u.upstream_inference_input_cost
                            .unwrap()
                            .try_add(u.upstream_inference_output_cost.unwrap())
                            .unwrap(),
                        upstream,
                        "{case}"
                    );
                    if u.is_byok {
                        assert!(case.contains("byok"), "{case}");
                        assert_eq!(
                            Some(actual),
                            u.cost.unwrap().try_add(upstream).ok(),
                            "{case}"
                        );
                    } else {
                        assert_eq!(actual, upstream, "{case}");
                    }
                }
            }
        }
        usages.insert(
            gid.to_owned(),
            (case.to_owned(), reply.usage.clone(), reply),
        );
    }
    assert!(checked >= 30, "only {checked} replies checked");
    let _ = std::fs::remove_dir_all(&dir);
}
