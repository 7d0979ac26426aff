//! `POST /api/v1/chat/completions`: the chat-completions form of a
//! generation, streaming (chunks, a final usage chunk, `[DONE]`) or not.
//!
//! Validation, faults, tokens, costs, cut streams and the registration in
//! the generation store are those of [`crate::responses`]. Every reply has
//! `system_fingerprint` and the full `usage.cost_details`
//! (`upstream_inference_cost` and its prompt and completions parts). A
//! stream that fails mid-way ends with a chunk carrying an `error` object
//! and `finish_reason: "error"`, then `[DONE]`, and no usage — as
//! OpenRouter sends it once the response has started.

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
};
use serde_json::{json, Value};

use crate::{
    reply,
    responses::{
        begin, chat_usage, render, stream_reply, with_generation_id, Ending, Planned,
        MID_STREAM_ERROR_MESSAGE,
    },
    Simulator,
};

/// The `system_fingerprint` of every reply.
pub const SYSTEM_FINGERPRINT: &str = "fp_tally_sim";

fn chunk(g: &Planned, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": g.id, "provider": g.provider, "model": g.model,
        "object": "chat.completion.chunk", "created": g.created,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "native_finish_reason": finish, "logprobs": null}],
    })
}

pub(crate) async fn post_chat_completions(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let prompt = |body: &Value| {
        let input = body["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["content"].as_str())
            .collect::<Vec<_>>()
            .join("\n");
        let max = body["max_tokens"]
            .as_u64()
            .or_else(|| body["max_completion_tokens"].as_u64());
        (input, max)
    };
    let (g, stream) = match begin(&sim, &headers, &body, prompt).await {
        Ok(started) => started,
        Err(resp) => return resp,
    };
    if !stream {
        let v = json!({
            "id": g.id, "provider": g.provider, "model": g.model,
            "object": "chat.completion", "created": g.created,
            "choices": [{"index": 0, "logprobs": null, "finish_reason": g.finish_reason, "native_finish_reason": g.finish_reason,
                         "message": {"role": "assistant", "content": g.words.join(" "), "refusal": null, "reasoning": null}}],
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "usage": chat_usage(&g),
        });
        return with_generation_id(reply::json(StatusCode::OK, render(&sim, &g, &v)), &g.id);
    }
    let mut chunks = vec![": OPENROUTER PROCESSING\n\n".to_owned()];
    for (i, w) in g.words.iter().take(g.sent).enumerate() {
        let last = i + 1 == g.words.len();
        let content = if last { w.clone() } else { format!("{w} ") };
        let c = chunk(
            &g,
            json!({"role": "assistant", "content": content}),
            last.then_some(g.finish_reason),
        );
        chunks.push(format!("data: {c}\n\n"));
    }
    match g.ending {
        Ending::Abort => return stream_reply(&g.id, chunks, true),
        Ending::MidStreamError => {
            let mut c = chunk(&g, json!({"content": ""}), Some("error"));
            c["error"] = json!({
                "code": 502,
                "message": MID_STREAM_ERROR_MESSAGE,
                "metadata": {"error_type": "provider_unavailable"},
            });
            chunks.push(format!("data: {c}\n\n"));
        }
        Ending::Complete => {
            let mut last = chunk(&g, json!({}), None);
            last["choices"] = json!([]);
            last["usage"] = chat_usage(&g);
            chunks.push(format!("data: {}\n\n", render(&sim, &g, &last)));
        }
    }
    chunks.push("data: [DONE]\n\n".to_owned());
    stream_reply(&g.id, chunks, false)
}
