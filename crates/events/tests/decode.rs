//! Decoder behaviour beyond the schema examples: subject checks, bodies that
//! are not events at all, error paths and codes.

use std::path::Path;
use std::str::FromStr;

use serde_json::{json, Value};
use tally_events::*;

fn example(ty: &str, name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../schemas/examples")
        .join(ty)
        .join("valid")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn completed() -> Value {
    example("tally.generation.completed.v1", "priced-17-digit-cost.json")
}

fn alert() -> Value {
    example(
        "tally.budget.threshold_crossed.v1",
        "eighty-percent-17-digit.json",
    )
}

fn body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn code(r: Result<AnyEvent, EventError>) -> &'static str {
    r.expect_err("should be refused").code()
}

/// `doc` decodes on `right` and on no subject of `wrong`, each refused as a
/// subject mismatch that names the subject it expected.
fn assert_only_on(doc: &Value, right: &str, wrong: &[&str]) {
    let b = body(doc);
    assert!(decode("tally", right, &b).is_ok());
    for &wrong in wrong {
        let err = decode("tally", wrong, &b).unwrap_err();
        assert_eq!(err.code(), "subject_mismatch", "{wrong}");
        assert_eq!(
            err,
            EventError::SubjectMismatch {
                subject: wrong.to_owned(),
                expected: right.to_owned(),
            }
        );
    }
}

#[test]
fn subject_must_carry_the_events_org() {
    assert_only_on(
        &completed(),
        "tally.generation.completed.acme",
        &[
            "tally.generation.completed.other",
            "tally.generation.completed.acme.extra",
            "tally.generation.completed",
            "tally.cost.reconciled.acme",
            "other.generation.completed.acme",
            "tally.generation.completed.*",
            "tally.generation.completed.>",
            "",
        ],
    );
    // The prefix is configuration.
    let b = body(&completed());
    assert!(decode("prod.tally", "prod.tally.generation.completed.acme", &b).is_ok());
}

#[test]
fn alert_subject_must_carry_org_and_budget() {
    assert_only_on(
        &alert(),
        "tally.budget.alert.acme.b1",
        &[
            "tally.budget.alert.acme.b2",
            "tally.budget.alert.other.b1",
            "tally.budget.alert.acme",
            "tally.budget.threshold_crossed.acme.b1",
        ],
    );
}

#[test]
fn org_token_check_cannot_be_bypassed_with_a_crafted_org_id() {
    let mut doc = completed();
    doc["data"]["org_id"] = json!("acme.b");
    let err = decode("tally", "tally.generation.completed.acme.b", &body(&doc)).unwrap_err();
    assert_eq!(err.code(), "invalid_id");
    assert_eq!(err.field(), Some("data.org_id"));
}

#[test]
fn not_json_is_malformed_json() {
    for b in [
        &b""[..],
        b"not json",
        b"{\"specversion\":",
        b"\xff\xfe",
        b"{} trailing",
    ] {
        assert_eq!(
            code(decode("tally", "tally.x.y", b)),
            "malformed_json",
            "{b:?}"
        );
    }
    // Deep nesting is refused, not a stack overflow.
    let deep = "[".repeat(100_000);
    assert_eq!(
        code(decode("tally", "s", deep.as_bytes())),
        "malformed_json"
    );
}

#[test]
fn json_that_is_not_an_event_is_an_invalid_envelope() {
    for b in ["[]", "1", "\"x\"", "null", "{}"] {
        let err = decode("tally", "s", b.as_bytes()).unwrap_err();
        assert_eq!(err.code(), "invalid_envelope", "{b}");
    }
}

#[test]
fn unknown_and_wrong_types() {
    let mut doc = completed();
    doc["type"] = json!("tally.generation.completed.v9");
    let err = decode("tally", "tally.generation.completed.acme", &body(&doc)).unwrap_err();
    assert_eq!(err.code(), "unknown_type");
    assert_eq!(
        err.to_string(),
        "type: unknown event type \"tally.generation.completed.v9\""
    );

    doc["type"] = json!(7);
    assert_eq!(code(decode("tally", "s", &body(&doc))), "invalid_envelope");

    let b = body(&completed());
    let err =
        decode_as::<CostReconciled>("tally", "tally.generation.completed.acme", &b).unwrap_err();
    assert_eq!(err.code(), "wrong_type");
    let ok =
        decode_as::<GenerationCompleted>("tally", "tally.generation.completed.acme", &b).unwrap();
    assert_eq!(ok.data.attribution.org_id, "acme");
}

/// Changes a valid event into an invalid one.
type Mutation = fn(&mut Value);

#[test]
fn errors_name_the_field() {
    let cases: Vec<(Mutation, &str, &str)> = vec![
        (
            |d| d["data"]["actual_cost_usd"] = json!(0.1),
            "invalid_money",
            "data.actual_cost_usd",
        ),
        (
            |d| d["data"]["usage"]["extra"] = json!(1),
            "invalid_data",
            "data.usage.extra",
        ),
        (
            |d| d["data"]["usage"] = json!({}),
            "invalid_data",
            "data.usage.prompt_tokens",
        ),
        (
            |d| d["data"]["usage"]["cached_tokens"] = json!("3"),
            "invalid_data",
            "data.usage.cached_tokens",
        ),
        (
            |d| d["data"]["agent_id"] = json!(""),
            "invalid_data",
            "data.agent_id",
        ),
        (
            |d| d["data"]["request_id"] = json!("a b"),
            "invalid_id",
            "data.request_id",
        ),
        (
            |d| d["time"] = json!("2025-05-01 12:00:00Z"),
            "invalid_envelope",
            "time",
        ),
        (|d| d["source"] = json!(null), "invalid_envelope", "source"),
        // The attribution is flattened into `data`: its fields are still
        // named by their own path, and a field neither the event nor the
        // attribution knows is still refused.
        (
            |d| d["data"]["agent"] = json!("a1"),
            "invalid_data",
            "data.agent",
        ),
        (
            |d| d["data"]["agent_id"] = json!(7),
            "invalid_data",
            "data.agent_id",
        ),
        (
            |d| {
                d["data"].as_object_mut().unwrap().remove("model");
            },
            "invalid_data",
            "data.model",
        ),
        (
            |d| d["data"]["org_id"] = json!("a b"),
            "invalid_id",
            "data.org_id",
        ),
    ];
    for (mutate, want_code, want_field) in cases {
        let mut doc = completed();
        mutate(&mut doc);
        let err = decode("tally", "tally.generation.completed.acme", &body(&doc)).unwrap_err();
        assert_eq!(err.code(), want_code, "{err}");
        assert_eq!(err.field(), Some(want_field), "{err}");
        assert!(err.to_string().starts_with(want_field), "{err}");
    }

    let mut doc = completed();
    doc["data"]["actual_cost_usd"] = json!(0.1);
    let err = decode("tally", "tally.generation.completed.acme", &body(&doc)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "data.actual_cost_usd: money must be a JSON string such as \"0.000123\", not a JSON number"
    );
    assert_eq!(err.money_code(), Some("amount_not_string"));

    let mut doc = example(
        "tally.ledger.posted.v1",
        "mixed-entries-17-digit-adjustment.json",
    );
    doc["data"]["entries"][1]["amount_usd"] = json!("1.0e-3");
    let err = decode("tally", "tally.ledger.posted.acme", &body(&doc)).unwrap_err();
    assert_eq!(err.field(), Some("data.entries[1].amount_usd"));
    assert_eq!(err.money_code(), Some("invalid_amount"));

    doc = example(
        "tally.ledger.posted.v1",
        "mixed-entries-17-digit-adjustment.json",
    );
    doc["data"]["entries"][0]["period_end"] = doc["data"]["entries"][0]["period_start"].clone();
    let err = decode("tally", "tally.ledger.posted.acme", &body(&doc)).unwrap_err();
    assert_eq!(err.field(), Some("data.entries[0].period_end"));
}

#[test]
fn exact_money_survives_decoding() {
    let event = decode(
        "tally",
        "tally.generation.completed.acme",
        &body(&completed()),
    )
    .unwrap();
    let AnyEvent::Completed(e) = event else {
        panic!("not completed")
    };
    assert_eq!(
        e.data.actual_cost_usd.unwrap().to_string(),
        "0.00012345678901234567"
    );
    assert!(!e.data.is_byok);
    assert_eq!(e.data.status, GenerationStatus::Completed);
}

#[test]
fn body_only_decoding_skips_the_subject_but_nothing_else() {
    let doc = example("tally.generation.result.v1", "completed.json");
    let e = decode_body_as::<GenerationResult>(&body(&doc)).unwrap();
    assert_eq!(e.data.status, ResultStatus::Completed);
    let mut bad = doc.clone();
    bad["data"]["org_id"] = json!("a.b");
    assert_eq!(
        decode_body_as::<GenerationResult>(&body(&bad))
            .unwrap_err()
            .code(),
        "invalid_id"
    );
    assert_eq!(
        decode_body_as::<GenerationCompleted>(&body(&doc))
            .unwrap_err()
            .code(),
        "wrong_type"
    );
}

#[test]
fn any_event_accessors() {
    let e = decode("tally", "tally.budget.alert.acme.b1", &body(&alert())).unwrap();
    assert_eq!(e.event_type(), EventType::BudgetThresholdCrossed);
    assert_eq!(e.org_id(), "acme");
    assert_eq!(e.id(), alert()["id"]);
    assert_eq!(e.source(), "/tally/projector");
    assert_eq!(e.bus_subject("tally"), "tally.budget.alert.acme.b1");
    assert_eq!(e.time().to_rfc3339(), "2025-05-01T12:00:10+00:00");
}

#[test]
fn wire_enums_parse_their_database_spelling() {
    for k in EntryKind::ALL {
        assert_eq!(EntryKind::from_str(k.as_str()).unwrap(), *k);
    }
    for b in Basis::ALL {
        assert_eq!(b.as_str().parse::<Basis>().unwrap(), *b);
        assert_eq!(serde_json::to_value(b).unwrap(), json!(b.as_str()));
    }
    for s in GenerationStatus::ALL {
        assert_eq!(s.to_string().parse::<GenerationStatus>().unwrap(), *s);
    }
    assert_eq!(Capacity::ByokFirst.as_str(), "byok_first");
    let err = "credit".parse::<EntryKind>().unwrap_err();
    assert_eq!(err.to_string(), "unknown EntryKind \"credit\"");
}

const SUBJECT: &str = "tally.generation.completed.acme";

fn refusal(b: &[u8]) -> (String, Option<String>) {
    let e = decode("tally", SUBJECT, b).expect_err("should be refused");
    (e.code().to_owned(), e.field().map(str::to_owned))
}

fn with_data(field: &str, value: Value) -> Vec<u8> {
    let mut v = completed();
    v["data"][field] = value;
    body(&v)
}

#[test]
fn control_characters_are_refused_at_decode_naming_the_field() {
    for (field, text) in [
        ("agent_id", "a\u{0}b"),
        ("model", "m\u{0}"),
        ("generation_id", "gen\u{1}"),
        ("session_id", "tab\there"),
        ("provider", "esc\u{1b}[0m"),
        ("user_id", "c1\u{85}"),
    ] {
        let (code, f) = refusal(&with_data(field, json!(text)));
        assert_eq!(code, "control_character", "{field}");
        assert_eq!(f.as_deref(), Some(format!("data.{field}").as_str()));
    }
    // In an envelope attribute too.
    let mut v = completed();
    v["id"] = json!("id\u{0}");
    assert_eq!(refusal(&body(&v)).0, "control_character");
    // Free text may hold line breaks and tabs, never NUL.
    let mut failed = example("tally.generation.failed.v1", "rate-limited.json");
    let subject = failed["subject"].as_str().unwrap().to_owned();
    failed["data"]["message"] = json!("line 1\nline\t2");
    assert!(decode("tally", &subject, &body(&failed)).is_ok());
    failed["data"]["message"] = json!("nul \u{0} here");
    let e = decode("tally", &subject, &body(&failed)).unwrap_err();
    assert_eq!(
        (e.code(), e.field()),
        ("control_character", Some("data.message"))
    );
}

#[test]
fn duplicate_keys_are_refused_on_the_bus_as_on_the_api() {
    let text = String::from_utf8(body(&completed())).unwrap();
    let repeats = "\"prompt_tokens\":1,".repeat(9_999);
    let dup = text.replacen(
        "\"prompt_tokens\":",
        &format!("{repeats}\"prompt_tokens\":"),
        1,
    );
    let (code, f) = refusal(dup.as_bytes());
    assert_eq!(code, "duplicate_key");
    assert_eq!(f.as_deref(), Some("data.usage.prompt_tokens"));
    // Also in the envelope.
    let dup = text.replacen(
        "\"specversion\":",
        "\"specversion\":\"1.0\",\"specversion\":",
        1,
    );
    assert_eq!(
        refusal(dup.as_bytes()),
        ("duplicate_key".into(), Some("specversion".into()))
    );
}

#[test]
fn completed_at_must_lie_in_the_window() {
    let now = chrono::Utc::now();
    for bad in [
        "0000-01-01T00:00:00Z".to_owned(),
        "0001-01-01T00:00:00Z".to_owned(),
        "2019-12-31T23:59:59Z".to_owned(),
        "9999-12-31T23:59:59.999999Z".to_owned(),
        (now + chrono::TimeDelta::days(2)).to_rfc3339(),
    ] {
        let (code, f) = refusal(&with_data("completed_at", json!(bad)));
        assert_eq!(code, "time_out_of_range", "{bad}");
        assert_eq!(f.as_deref(), Some("data.completed_at"));
    }
    for good in [
        "2020-01-01T00:00:00Z".to_owned(),
        (now + chrono::TimeDelta::hours(23)).to_rfc3339(),
    ] {
        assert!(decode("tally", SUBJECT, &with_data("completed_at", json!(good))).is_ok());
    }
}

#[test]
fn a_leap_second_is_the_last_microsecond_of_its_minute() {
    // A leap second, and a time past the last microsecond of 59.
    for written in ["2026-11-30T23:59:60Z", "2026-11-30T23:59:59.9999999Z"] {
        let b = with_data("completed_at", json!(written));
        let AnyEvent::Completed(e) = decode("tally", SUBJECT, &b).unwrap() else {
            panic!("not a completed event");
        };
        assert_eq!(
            tally_events::time::format(&e.data.completed_at),
            "2026-11-30T23:59:59.999999Z",
            "{written}"
        );
    }
}

#[test]
fn objects_are_never_read_positionally() {
    let (code, f) = refusal(&with_data("usage", json!([10, 20])));
    assert_eq!(code, "invalid_data");
    assert_eq!(f.as_deref(), Some("data.usage"));
    // Errors inside the object keep their path.
    let (code, f) = refusal(&with_data(
        "usage",
        json!({"prompt_tokens": -1, "completion_tokens": 1}),
    ));
    assert_eq!(code, "invalid_data");
    assert_eq!(f.as_deref(), Some("data.usage.prompt_tokens"));
}

#[test]
fn optional_objects_are_never_read_positionally() {
    // serde's derived structs accept an array for a struct, positionally:
    // `"max_price": [null, null]` would read as "no ceilings".
    for bad in [
        json!({"provider": {"max_price": [null, null]}}),
        json!({"provider": {"max_price": ["0.1"]}}),
        json!({"provider": [["a"], true]}),
        json!({"provider": "x"}),
    ] {
        assert!(
            serde_json::from_value::<Routing>(bad.clone()).is_err(),
            "{bad} was read"
        );
    }
    let ok: Routing =
        serde_json::from_value(json!({"provider": {"max_price": {"prompt": "0.000001"}}})).unwrap();
    assert!(ok
        .provider
        .unwrap()
        .max_price
        .unwrap()
        .prompt_usd_per_mtok
        .is_some());
    let none: Routing = serde_json::from_value(json!({"provider": null})).unwrap();
    assert!(none.provider.is_none());
    let absent: Routing = serde_json::from_value(json!({})).unwrap();
    assert!(absent.provider.is_none());
}

#[test]
fn refusals_repeat_only_a_bounded_prefix_of_the_input() {
    let long = "x".repeat(10_000);
    let e = decode("tally", SUBJECT, &with_data("org_id", json!(long))).unwrap_err();
    assert_eq!(e.code(), "invalid_id");
    assert!(e.to_string().len() < 300, "{}", e.to_string().len());
    let e = decode("tally", SUBJECT, &with_data("completed_at", json!(long))).unwrap_err();
    assert!(e.to_string().len() < 300, "{}", e.to_string().len());
}

#[test]
fn a_completed_event_without_status_is_completed_but_a_wrong_status_is_refused() {
    let mut doc = completed();
    doc["data"].as_object_mut().unwrap().remove("status");
    let event = decode("tally", "tally.generation.completed.acme", &body(&doc)).unwrap();
    let AnyEvent::Completed(e) = event else {
        panic!("not completed")
    };
    assert_eq!(e.data.status, GenerationStatus::Completed);
    // Written back with the default spelled out.
    let again: Value = serde_json::from_slice(&e.to_json()).unwrap();
    assert_eq!(again["data"]["status"], "completed");

    for bad in [json!("finished"), Value::Null] {
        doc["data"]["status"] = bad.clone();
        let refused = decode("tally", "tally.generation.completed.acme", &body(&doc));
        assert_eq!(code(refused), "invalid_data", "{bad}");
    }
}

#[test]
fn a_reconciled_cost_must_add_up() {
    let byok = example("tally.cost.reconciled.v1", "byok.json");
    let subject = "tally.cost.reconciled.org_B-2";
    let refused = |doc: &Value| -> Option<(String, Option<String>)> {
        decode("tally", subject, &body(doc))
            .err()
            .map(|e| (e.code().to_owned(), e.field().map(str::to_owned)))
    };
    let at_actual = Some((
        "invalid_data".to_owned(),
        Some("data.actual_cost_usd".into()),
    ));
    assert_eq!(refused(&byok), None, "the example adds up");

    // BYOK: actual = total + upstream, to the last digit.
    let mut doc = byok.clone();
    doc["data"]["actual_cost_usd"] = json!("0.0020999999999999999999");
    assert_eq!(refused(&doc), at_actual);
    doc["data"]["actual_cost_usd"] = json!("0.0001");
    assert_eq!(refused(&doc), at_actual, "the fee alone is not the cost");

    // BYOK without an upstream figure: the fee is all that is known.
    doc = byok.clone();
    doc["data"]["upstream_inference_cost_usd"] = json!(null);
    assert_eq!(refused(&doc), at_actual);
    doc["data"]["actual_cost_usd"] = json!("0.0001");
    assert_eq!(refused(&doc), None);

    // Not BYOK: actual = total; an upstream figure is already inside it.
    doc = byok.clone();
    doc["data"]["is_byok"] = json!(false);
    assert_eq!(refused(&doc), at_actual);
    doc["data"]["actual_cost_usd"] = json!("0.0001");
    assert_eq!(refused(&doc), None);
}
