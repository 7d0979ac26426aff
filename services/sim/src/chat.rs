//! `POST /api/v1/chat/completions`: the chat-completions form of a
//! generation, streaming (chunks, a final usage chunk, `[DONE]`) or not.
//!
//! Validation, faults, tokens, costs, aborted streams and the registration
//! in the generation store are those of [`crate::responses`].

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
};
use serde_json::{json, Value};

use crate::{
    reply,
    responses::{chat_usage, plan, render, stream_reply, with_generation_id, Planned},
    Simulator,
};

fn chunk(g: &Planned, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": g.id, "provider": g.provider, "model": g.model,
        "object": "chat.completion.chunk", "created": g.created,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "native_finish_reason": finish, "logprobs": null}],
    })
}

pub(crate) async fn post_chat_completions(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return reply::error(StatusCode::BAD_REQUEST, "body is not JSON", None);
    };
    let stream = body["stream"].as_bool().unwrap_or(false);
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
    let g = match plan(&sim, &headers, &body, &input, max, stream) {
        Ok(g) => g,
        Err(resp) => return resp,
    };
    let latency = sim.shared.cfg.gen_latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let text = g.words.join(" ");
    if !stream {
        let v = json!({
            "id": g.id, "provider": g.provider, "model": g.model,
            "object": "chat.completion", "created": g.created,
            "choices": [{"index": 0, "logprobs": null, "finish_reason": "stop", "native_finish_reason": "stop",
                         "message": {"role": "assistant", "content": text, "refusal": null, "reasoning": null}}],
            "usage": chat_usage(&g),
        });
        return with_generation_id(reply::json(StatusCode::OK, render(&sim, &g, &v)), &g.id);
    }
    let mut chunks = vec![": OPENROUTER PROCESSING\n\n".to_owned()];
    let n = if g.abort {
        g.words.len() / 2
    } else {
        g.words.len()
    };
    for (i, w) in g.words.iter().take(n).enumerate() {
        let last = i + 1 == g.words.len();
        let content = if last { w.clone() } else { format!("{w} ") };
        let c = chunk(
            &g,
            json!({"role": "assistant", "content": content}),
            last.then_some("stop"),
        );
        chunks.push(format!("data: {c}\n\n"));
    }
    if !g.abort {
        let mut last = chunk(&g, json!({}), None);
        last["choices"] = json!([]);
        last["usage"] = chat_usage(&g);
        chunks.push(format!("data: {}\n\n", render(&sim, &g, &last)));
        chunks.push("data: [DONE]\n\n".to_owned());
    }
    stream_reply(&g.id, chunks, g.abort)
}
