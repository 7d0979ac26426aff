//! The contract test: the JSON Schemas in `schemas/` and the Rust types of
//! `tally-events` describe the same wire format.
//!
//! * Every valid example is accepted by its schema, decodes with
//!   [`decode`], re-encodes to JSON the schema accepts and that equals the
//!   original semantically.
//! * Every invalid example (`invalid/<name>.<expected_code>.json`) is refused
//!   by its schema and by the decoder with the expected [`EventError::code`].
//! * Mutations of every valid example (fields removed, nulled, emptied,
//!   over-long, negative, retyped) get the same verdict from schema and
//!   decoder.
//! * The money patterns of the schemas agree with `tally_money`'s parsers.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use tally_events::Attribution;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use jsonschema::Validator;
use proptest::prelude::*;
use serde_json::{json, Value};
use tally_events::*;
use tally_money::{Cost, Usd};

const PREFIX: &str = "tally";

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn schema_doc(ty: EventType) -> Value {
    read_json(&schemas_dir().join(format!("{}.schema.json", ty.as_str())))
}

fn validator(schema: &Value) -> Validator {
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(schema)
        .unwrap_or_else(|e| panic!("schema does not compile: {e}"))
}

fn validators() -> BTreeMap<EventType, Validator> {
    EventType::ALL
        .into_iter()
        .map(|ty| (ty, validator(&schema_doc(ty))))
        .collect()
}

/// `(file name, document)` of every example of `ty` in `valid` or `invalid`.
fn examples(ty: EventType, kind: &str) -> Vec<(String, Value)> {
    let dir = schemas_dir().join("examples").join(ty.as_str()).join(kind);
    let mut out: Vec<(String, Value)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, read_json(&p))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The delivery subject an example belongs on.
fn subject_of(ty: EventType, doc: &Value) -> String {
    let org = doc["data"]["org_id"].as_str().unwrap_or("missing");
    ty.subject(PREFIX, org, doc["data"]["budget_id"].as_str())
}

fn bytes(doc: &Value) -> Vec<u8> {
    serde_json::to_vec(doc).unwrap()
}

/// [`decode_as`] for the payload type of `ty`.
fn decode_typed(ty: EventType, subject: &str, body: &[u8]) -> Result<AnyEvent, EventError> {
    match ty {
        EventType::GenerationRequested => decode_as(PREFIX, subject, body).map(AnyEvent::Requested),
        EventType::GenerationCompleted => decode_as(PREFIX, subject, body).map(AnyEvent::Completed),
        EventType::GenerationFailed => decode_as(PREFIX, subject, body).map(AnyEvent::Failed),
        EventType::GenerationResult => decode_as(PREFIX, subject, body).map(AnyEvent::Result),
        EventType::CostReconciled => decode_as(PREFIX, subject, body).map(AnyEvent::Reconciled),
        EventType::CostUnresolved => decode_as(PREFIX, subject, body).map(AnyEvent::Unresolved),
        EventType::LedgerPosted => decode_as(PREFIX, subject, body).map(AnyEvent::LedgerPosted),
        EventType::BudgetThresholdCrossed => {
            decode_as(PREFIX, subject, body).map(AnyEvent::ThresholdCrossed)
        }
    }
}

fn schema_errors(v: &Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// Fields whose schema default is `false`: absent and `false` mean the same.
const DEFAULT_FALSE: [&str; 2] = ["is_byok", "stream"];

/// Members whose schema default is a string: absent and the default mean
/// the same.
const DEFAULT_TEXT: [(&str, &str); 1] = [("status", "completed")];

/// Semantic form of a document: `null` members and default-valued members
/// dropped, timestamps in UTC with nanoseconds, decimal strings canonical.
fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .filter(|(k, v)| !(DEFAULT_FALSE.contains(&k.as_str()) && **v == json!(false)))
                .filter(|(k, v)| !DEFAULT_TEXT.iter().any(|(dk, dv)| k == dk && *v == dv))
                .map(|(k, v)| (k.clone(), normalize(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        Value::String(s) => {
            if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                Value::String(
                    t.with_timezone(&Utc)
                        .to_rfc3339_opts(SecondsFormat::Nanos, true),
                )
            } else if let Ok(d) = tally_money::parse_decimal_str(s) {
                Value::String(tally_money::to_decimal_string(&d))
            } else {
                v.clone()
            }
        }
        _ => v.clone(),
    }
}

#[test]
fn every_event_type_has_a_schema_and_examples() {
    for ty in EventType::ALL {
        let schema = schema_doc(ty);
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{ty}"
        );
        assert_eq!(schema["properties"]["type"]["const"], ty.as_str());
        assert_eq!(schema["properties"]["specversion"]["const"], SPEC_VERSION);
        assert_eq!(
            schema["properties"]["datacontenttype"]["const"],
            DATA_CONTENT_TYPE
        );
        assert!(
            examples(ty, "valid").len() >= 2,
            "{ty}: at least two valid examples"
        );
        assert!(
            examples(ty, "invalid").len() >= 3,
            "{ty}: at least three invalid examples"
        );
    }
    // No schema without an event type.
    for entry in fs::read_dir(schemas_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(ty) = name.strip_suffix(".schema.json") {
            assert!(
                EventType::from_type(ty).is_some(),
                "{name} has no EventType"
            );
        }
    }
}

#[test]
fn high_precision_costs_are_exemplified() {
    // At least one valid example with 17+ significant digits in an amount
    // for every type that carries money.
    let money_types = [
        EventType::GenerationRequested,
        EventType::GenerationCompleted,
        EventType::CostReconciled,
        EventType::LedgerPosted,
        EventType::BudgetThresholdCrossed,
    ];
    for ty in money_types {
        let found = examples(ty, "valid").iter().any(|(_, doc)| {
            let text = doc.to_string();
            text.split('"').any(|s| {
                tally_money::parse_decimal_str(s).is_ok()
                    && s.chars()
                        .filter(char::is_ascii_digit)
                        .skip_while(|c| *c == '0')
                        .count()
                        >= 17
            })
        });
        assert!(found, "{ty}: no valid example with a 17+ digit amount");
    }
}

#[test]
fn valid_examples_decode_and_round_trip() {
    let validators = validators();
    let mut checked = 0;
    for ty in EventType::ALL {
        let v = &validators[&ty];
        for (name, doc) in examples(ty, "valid") {
            let errors = schema_errors(v, &doc);
            assert!(
                errors.is_empty(),
                "{ty}/{name}: schema refuses it: {errors:?}"
            );

            let subject = subject_of(ty, &doc);
            let event = decode(PREFIX, &subject, &bytes(&doc))
                .unwrap_or_else(|e| panic!("{ty}/{name}: decode: {e} [{}]", e.code()));
            assert_eq!(event.event_type(), ty, "{ty}/{name}");
            assert_eq!(event.org_id(), doc["data"]["org_id"], "{ty}/{name}");
            assert_eq!(event.bus_subject(PREFIX), subject, "{ty}/{name}");
            assert_eq!(doc["subject"], subject, "{ty}/{name}: subject convention");

            let again: Value = serde_json::from_slice(&event.to_json()).unwrap();
            let errors = schema_errors(v, &again);
            assert!(
                errors.is_empty(),
                "{ty}/{name}: schema refuses the re-encoding {again}: {errors:?}"
            );
            assert_eq!(
                normalize(&again),
                normalize(&doc),
                "{ty}/{name}: round trip changed it"
            );

            let twice = decode(PREFIX, &subject, &event.to_json()).unwrap();
            assert_eq!(twice, event, "{ty}/{name}: second decode differs");
            checked += 1;
        }
    }
    assert!(checked >= 16, "only {checked} valid examples");
}

#[test]
fn invalid_examples_are_refused_by_schema_and_decoder_with_the_expected_code() {
    let validators = validators();
    let codes = [
        "malformed_json",
        "unsupported_specversion",
        "unknown_type",
        "wrong_type",
        "invalid_envelope",
        "invalid_data",
        "invalid_money",
        "invalid_id",
        "subject_mismatch",
    ];
    let mut checked = 0;
    for ty in EventType::ALL {
        let v = &validators[&ty];
        for (name, doc) in examples(ty, "invalid") {
            let expected = name
                .strip_suffix(".json")
                .and_then(|n| n.rsplit('.').next())
                .unwrap();
            assert!(
                codes.contains(&expected),
                "{ty}/{name}: no expected code in the file name"
            );
            assert!(!v.is_valid(&doc), "{ty}/{name}: the schema accepts it");

            let subject = subject_of(ty, &doc);
            let body = bytes(&doc);
            let err = decode_typed(ty, &subject, &body)
                .expect_err(&format!("{ty}/{name}: decode_as accepts it"));
            assert_eq!(err.code(), expected, "{ty}/{name}: {err}");
            assert!(
                decode(PREFIX, &subject, &body).is_err(),
                "{ty}/{name}: decode accepts it"
            );
            println!("{ty}/{name}: {err}");
            checked += 1;
        }
    }
    assert!(checked >= 24, "only {checked} invalid examples");
}

#[test]
fn shared_definitions_are_identical_in_every_schema() {
    let mut seen: BTreeMap<String, (EventType, Value)> = BTreeMap::new();
    for ty in EventType::ALL {
        let schema = schema_doc(ty);
        let defs = schema["$defs"].as_object().expect("$defs");
        for (name, def) in defs {
            if name == "data" {
                continue;
            }
            match seen.get(name) {
                Some((first, other)) => {
                    assert_eq!(def, other, "$defs/{name} differs between {first} and {ty}")
                }
                None => {
                    seen.insert(name.clone(), (ty, def.clone()));
                }
            }
        }
        // The envelope is the same in every schema, up to `type`.
        let mut envelope = schema["properties"].clone();
        envelope["type"]["const"] = json!("*");
        envelope["subject"]["description"] = json!("*");
        let mut first = schema_doc(EventType::GenerationCompleted)["properties"].clone();
        first["type"]["const"] = json!("*");
        first["subject"]["description"] = json!("*");
        assert_eq!(envelope, first, "{ty}: envelope differs");
    }
}

/// Every mutation of a JSON document this test tries: `(description, doc)`.
fn mutations(doc: &Value) -> Vec<(String, Value)> {
    fn walk(root: &Value, node: &Value, path: &mut Vec<Value>, out: &mut Vec<(String, Value)>) {
        let at = |path: &Vec<Value>, f: &dyn Fn(&mut Value)| {
            let mut copy = root.clone();
            let mut n = &mut copy;
            for p in path {
                n = match p {
                    Value::String(k) => n.get_mut(k.as_str()).unwrap(),
                    Value::Number(i) => n.get_mut(i.as_u64().unwrap() as usize).unwrap(),
                    _ => unreachable!(),
                };
            }
            f(n);
            copy
        };
        let label = |path: &Vec<Value>, what: &str| {
            let p: Vec<String> = path
                .iter()
                .map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_owned))
                .collect();
            format!("{} {what}", p.join("."))
        };
        match node {
            Value::Object(m) => {
                for (k, child) in m {
                    let key = k.clone();
                    out.push((
                        label(path, &format!("remove {k}")),
                        at(path, &|n| {
                            n.as_object_mut().unwrap().remove(&key);
                        }),
                    ));
                    out.push((
                        label(path, &format!("null {k}")),
                        at(path, &|n| n[key.as_str()] = Value::Null),
                    ));
                    path.push(Value::String(k.clone()));
                    walk(root, child, path, out);
                    path.pop();
                }
                out.push((
                    label(path, "add unknown member"),
                    at(path, &|n| n["x_unknown"] = json!(1)),
                ));
            }
            Value::Array(a) => {
                out.push((label(path, "empty array"), at(path, &|n| *n = json!([]))));
                out.push((label(path, "string"), at(path, &|n| *n = json!("x"))));
                for (i, child) in a.iter().enumerate() {
                    path.push(json!(i));
                    walk(root, child, path, out);
                    path.pop();
                }
            }
            Value::String(s) => {
                let replacements = [
                    json!(""),
                    json!("x".repeat(257)),
                    json!("y".repeat(513)),
                    json!("a.b"),
                    json!("-1"),
                    json!("1e-7"),
                    json!("2025-13-01T00:00:00Z"),
                    json!("2025-05-01 12:00:00Z"),
                    json!("2025-05-01T12:00:00"),
                    json!("2025-05-01t12:00:00.5z"),
                    json!(1),
                    json!(0.5),
                    json!(true),
                    json!({}),
                ];
                for r in replacements {
                    if *s == r.as_str().unwrap_or("\u{0}") {
                        continue;
                    }
                    out.push((
                        label(path, &format!("= {r}")),
                        at(path, &|n| *n = r.clone()),
                    ));
                }
            }
            Value::Number(_) => {
                for r in [
                    json!(-1),
                    json!(0),
                    json!(1),
                    json!(99),
                    json!(600),
                    json!(1001),
                    json!(1.5),
                    json!(4294967296u64),
                    json!("1"),
                ] {
                    out.push((
                        label(path, &format!("= {r}")),
                        at(path, &|n| *n = r.clone()),
                    ));
                }
            }
            Value::Bool(_) => {
                out.push((label(path, "= \"true\""), at(path, &|n| *n = json!("true"))));
                out.push((label(path, "= 0"), at(path, &|n| *n = json!(0))));
            }
            Value::Null => {
                for r in [
                    json!(""),
                    json!("gen-x"),
                    json!("0.1"),
                    json!(0.1),
                    json!(200),
                    json!({}),
                ] {
                    out.push((
                        label(path, &format!("= {r}")),
                        at(path, &|n| *n = r.clone()),
                    ));
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(doc, doc, &mut Vec::new(), &mut out);
    out
}

/// Rules the decoder enforces beyond what a JSON Schema can state, as (event
/// type, the field its refusal names); each is tested on its own in
/// `tests/decode.rs`.
const BEYOND_THE_SCHEMA: [(EventType, &str); 1] = [
    // actual = total (+ upstream when BYOK): a sum across three fields.
    (EventType::CostReconciled, "data.actual_cost_usd"),
];

#[test]
fn schema_and_decoder_agree_on_mutations_of_every_valid_example() {
    let validators = validators();
    let mut disagreements = Vec::new();
    let mut tried = 0;
    for ty in EventType::ALL {
        let v = &validators[&ty];
        for (name, doc) in examples(ty, "valid") {
            let subject = subject_of(ty, &doc);
            for (what, mutated) in mutations(&doc) {
                // A mutated org or budget id moves the event to another
                // subject; follow it so that only the payload is judged.
                let subject = match (
                    mutated["data"]["org_id"].as_str(),
                    mutated["data"]["budget_id"].as_str(),
                ) {
                    (Some(org), budget) if is_valid_id(org) => ty.subject(PREFIX, org, budget),
                    _ => subject.clone(),
                };
                let by_schema = v.is_valid(&mutated);
                let by_decoder = decode_typed(ty, &subject, &bytes(&mutated));
                let beyond_the_schema = by_decoder.as_ref().err().is_some_and(|e| {
                    BEYOND_THE_SCHEMA.contains(&(ty, e.field().unwrap_or_default()))
                });
                if by_schema != by_decoder.is_ok() && !(by_schema && beyond_the_schema) {
                    disagreements.push(format!(
                        "{ty}/{name}: {what}: schema {}, decoder {:?}",
                        if by_schema { "accepts" } else { "refuses" },
                        by_decoder.map(|_| "accepts").map_err(|e| e.to_string())
                    ));
                }
                tried += 1;
            }
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {tried} mutations judged differently:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    assert!(tried > 1000, "only {tried} mutations");
}

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

use tally_money::{cost, usd};

/// Encodes `event`, checks it against its schema and decodes it back.
fn through_the_wire<T: Payload + Clone + PartialEq + std::fmt::Debug>(
    validators: &BTreeMap<EventType, Validator>,
    event: CloudEvent<T>,
) -> AnyEvent {
    event.validate().unwrap();
    let body = event.to_json();
    let doc: Value = serde_json::from_slice(&body).unwrap();
    let errors = schema_errors(&validators[&T::TYPE], &doc);
    assert!(errors.is_empty(), "{doc}: {errors:?}");
    let back = decode_as::<T>(PREFIX, &event.bus_subject(PREFIX), &body).unwrap();
    assert_eq!(back, event);
    decode(PREFIX, &event.bus_subject(PREFIX), &body).unwrap()
}

/// [`through_the_wire`] for `data` published by `source` at `at`.
fn send<T: Payload + Clone + PartialEq + std::fmt::Debug>(
    validators: &BTreeMap<EventType, Validator>,
    id: impl Into<String>,
    source: &str,
    at: DateTime<Utc>,
    data: T,
) -> AnyEvent {
    through_the_wire(
        validators,
        CloudEvent::new_on_bus(PREFIX, id, source, at, data),
    )
}

#[test]
fn events_built_in_rust_satisfy_their_schemas() {
    let v = validators();
    let now = Utc.with_ymd_and_hms(2025, 5, 1, 12, 0, 0).unwrap();
    let completed = GenerationCompleted {
        generation_id: "gen-1".into(),
        attribution: Attribution {
            agent_id: Some("a".into()),
            ..Attribution::new("acme", "openai/gpt-4o-mini")
        },
        provider: Some("OpenAI".into()),
        completed_at: t("2025-05-01T11:59:59.123456Z"),
        usage: Usage {
            prompt_tokens: u64::MAX,
            completion_tokens: 0,
            reasoning_tokens: Some(3),
            ..Usage::default()
        },
        is_byok: false,
        actual_cost_usd: Some(cost!("0.00012345678901234567")),
        estimated_cost_usd: Some(Cost::new(Usd::new(1500, 2)).unwrap()), // 15.00: written as "15"
        status: GenerationStatus::Cancelled,
        request_id: None,
        upstream_inference_cost_usd: None,
    };
    let event = CloudEvent::new_on_bus(PREFIX, new_event_id(), "/tally/worker", now, completed);
    assert_eq!(event.subject, "tally.generation.completed.acme");
    let body: Value = serde_json::from_slice(&event.to_json()).unwrap();
    assert_eq!(body["data"]["estimated_cost_usd"], "15");
    assert_eq!(body["data"]["actual_cost_usd"], "0.00012345678901234567");
    assert_eq!(body["data"]["completed_at"], "2025-05-01T11:59:59.123456Z");
    through_the_wire(&v, event);

    let requested = GenerationRequested {
        request_id: "r1".into(),
        attribution: Attribution::new("acme", "m"),
        models: None,
        input: Input::Messages(vec![InputMessage {
            role: Role::User,
            content: "hi".into(),
        }]),
        instructions: None,
        max_output_tokens: Some(1),
        stream: false,
        routing: Some(Routing {
            provider: Some(ProviderPrefs {
                sort: Some(Sort::Throughput),
                data_collection: Some(DataCollection::Allow),
                max_price: Some(MaxPrice {
                    prompt_usd_per_mtok: Some(cost!("1")),
                    completion_usd_per_mtok: None,
                }),
                ..ProviderPrefs::default()
            }),
            capacity: Some(Capacity::ByokOnly),
            presets: None,
        }),
        server_tools: None,
        reply_subject: Some("_INBOX.x".into()),
        requested_at: now,
    };
    send(&v, "r1", "/agents/x", now, requested);

    let entry = |kind, basis, amount: &str| LedgerEntry {
        entry_id: format!("e-{amount}"),
        budget_id: "b1".into(),
        generation_id: "gen-1".into(),
        kind,
        basis,
        amount_usd: usd!(amount),
        period_start: t("2025-05-01T00:00:00Z"),
        period_end: t("2025-06-01T00:00:00Z"),
        posted_at: now,
    };
    let posted = LedgerPosted {
        org_id: "acme".into(),
        batch_id: "7".into(),
        entries: vec![
            entry(EntryKind::Debit, Basis::Estimate, "15"),
            entry(
                EntryKind::Adjustment,
                Basis::Actual,
                "-14.99987654321098765433",
            ),
            entry(EntryKind::Debit, Basis::None, "0"),
        ],
    };
    let id = derived_event_id(EventType::LedgerPosted, &["7", "acme"]);
    send(&v, id, "/tally/projector", now, posted);

    let alert = ThresholdCrossed {
        alert_id: "b1:2025-05:100".into(),
        budget_id: "b1".into(),
        org_id: "acme".into(),
        budget_name: "Monthly".into(),
        threshold_percent: 100,
        limit_usd: cost!("10"),
        spent_usd: cost!("10.00000000000000000001"),
        period_start: t("2025-05-01T00:00:00Z"),
        period_end: t("2025-06-01T00:00:00Z"),
        generation_id: "gen-1".into(),
        crossed_at: now,
    };
    let event = CloudEvent::new_on_bus(PREFIX, "a1", "/tally/projector", now, alert);
    assert_eq!(event.subject, "tally.budget.alert.acme.b1");
    through_the_wire(&v, event);

    let reconciled = CostReconciled {
        generation_id: "gen-1".into(),
        org_id: "acme".into(),
        actual_cost_usd: cost!("0.0021"),
        total_cost_usd: cost!("0.0001"),
        upstream_inference_cost_usd: Some(cost!("0.002")),
        is_byok: true,
        attempts: 1,
        reconciled_at: now,
    };
    send(&v, "x", "/tally/reconciler", now, reconciled);

    let unresolved = CostUnresolved {
        generation_id: "gen-1".into(),
        org_id: "acme".into(),
        reason: "not_found".into(),
        attempts: 0,
        last_status: None,
        gave_up_at: now,
    };
    send(&v, "x", "/tally/reconciler", now, unresolved);

    let failed = GenerationFailed {
        request_id: "r1".into(),
        attribution: Attribution::new("acme", "m"),
        generation_id: None,
        reason: "no_capacity".into(),
        message: "none".into(),
        retryable: true,
        failed_at: now,
    };
    send(&v, "x", "/tally/worker", now, failed);

    let result = GenerationResult {
        request_id: "r1".into(),
        org_id: "acme".into(),
        generation_id: None,
        status: ResultStatus::Failed,
        output_text: None,
        error: Some(ResultError {
            reason: "no_capacity".into(),
            message: "none".into(),
        }),
        finished_at: now,
    };
    let event = CloudEvent::new_on_bus(PREFIX, "x", "/tally/worker", now, result);
    let body: Value = serde_json::from_slice(&event.to_json()).unwrap();
    assert_eq!(
        body["data"]["generation_id"],
        Value::Null,
        "required nullable is written"
    );
    assert!(body["data"].get("output_text").is_some());
    through_the_wire(&v, event);
}

#[test]
fn rust_validation_refuses_what_the_schema_would() {
    let now = Utc.with_ymd_and_hms(2025, 5, 1, 12, 0, 0).unwrap();
    let unresolved = |reason: &str, status| CostUnresolved {
        generation_id: "gen-1".into(),
        org_id: "acme".into(),
        reason: reason.into(),
        attempts: 1,
        last_status: status,
        gave_up_at: now,
    };
    assert_eq!(
        unresolved("Nope", None).validate().unwrap_err().code(),
        "invalid_data"
    );
    assert_eq!(
        unresolved("x", Some(600)).validate().unwrap_err().code(),
        "invalid_data"
    );
    // Too precise to be kept exactly: refused when decoded, not rounded.
    let mut doc = read_json(
        &schemas_dir().join("examples/tally.cost.reconciled.v1/valid/not-byok-17-digit.json"),
    );
    doc["data"]["actual_cost_usd"] = json!("0.00000000000000000000000000001");
    let subject = subject_of(EventType::CostReconciled, &doc);
    let err = decode(PREFIX, &subject, &bytes(&doc)).unwrap_err();
    assert_eq!(err.code(), "invalid_money");
    assert_eq!(err.money_code(), Some("amount_too_precise"));
    assert_eq!(err.field(), Some("data.actual_cost_usd"));
    // 28 digits are kept.
    doc["data"]["actual_cost_usd"] = json!("0.0000000000009999999999999999");
    doc["data"]["total_cost_usd"] = json!("0.0000000000009999999999999999");
    let event = decode(PREFIX, &subject, &bytes(&doc)).unwrap();
    let back: Value = serde_json::from_slice(&event.to_json()).unwrap();
    assert_eq!(
        back["data"]["actual_cost_usd"],
        "0.0000000000009999999999999999"
    );
    let _ = now;
}

static USD: LazyLock<Validator> = LazyLock::new(|| pattern_validator("usd"));
static COST: LazyLock<Validator> = LazyLock::new(|| pattern_validator("cost"));

/// The JSON Schema `pattern` of `$defs/<name>`, compiled on its own.
fn pattern_validator(name: &str) -> Validator {
    let schema = schema_doc(EventType::LedgerPosted);
    let def = schema["$defs"][name].clone();
    assert!(def["pattern"].is_string(), "$defs/{name}");
    validator(&json!({"type": "string", "pattern": def["pattern"]}))
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// The schemas' money patterns accept exactly what `tally_money` parses.
    #[test]
    fn money_patterns_match_the_money_crate(text in "-?[0-9]{1,12}(\\.[0-9]{0,32})?") {
        let (usd, cost) = (&*USD, &*COST);
        let text_json = json!(text);
        prop_assert_eq!(usd.is_valid(&text_json), tally_money::parse_decimal_str(&text).is_ok(), "usd {}", text);
        if !text.starts_with('-') {
            prop_assert_eq!(cost.is_valid(&text_json), tally_money::parse_cost_str(&text).is_ok(), "cost {}", text);
        } else {
            prop_assert!(!cost.is_valid(&text_json));
        }
    }

    /// Every amount tally can hold is written in a form the schemas accept.
    #[test]
    fn written_amounts_match_the_patterns(
        (mantissa, scale) in (0u32..=28).prop_flat_map(|scale| {
            // |value| <= 10^10 with `scale` fractional digits.
            let bound = 10i128.pow(10 + scale);
            (-bound..=bound, Just(scale))
        })
    ) {
        let value = Usd::from_parts(mantissa, scale).unwrap();
        prop_assert!(tally_money::ensure_amount(value).is_ok());
        let text = tally_money::to_decimal_string(&value);
        prop_assert!(USD.is_valid(&json!(text)), "{}", text);
        if !value.is_sign_negative() || value.is_zero() {
            prop_assert!(COST.is_valid(&json!(text)), "{}", text);
        }
        prop_assert_eq!(tally_money::parse_decimal_str(&text).unwrap(), value);
    }
}
