//! `POST /chat/completions` replies: what one chat-completions generation
//! cost, read from a complete body or from its stream.
//!
//! tally runs its own generations through the Responses API
//! ([`crate::responses`]); this module reads the chat-completions form of
//! the same facts (producers that call chat completions themselves, and the
//! conformance tests that hold the simulator, OpenRouter's SDK and tally to
//! the same cost fields). Both give a [`ResponsesReply`]:
//!
//! * [`chat_reply_from_body`] — a non-streaming `200` body;
//! * [`ChatStreamAccumulator`] — the chunks of a stream: text deltas, the
//!   final usage chunk (`choices: []`), `data: [DONE]`.
//!
//! # Decisions
//!
//! * **A mid-stream error is a reply, not an error.** A chunk carrying an
//!   `error` object (its choice finishing with `finish_reason: "error"`)
//!   ends the generation as `status = "failed"` with the error's message and
//!   no usage: the generation id is known, and the reconciler finds what it
//!   cost.
//! * **A stream without `[DONE]` and without usage was cut**
//!   (`aborted = true`); one that ended with `[DONE]` was not, even when it
//!   failed.
//! * **Usage is read exactly as in the Responses API** (same code): costs
//!   from the literal JSON number text, negative or unreadable costs make
//!   the reply malformed.

use serde::Deserialize;
use serde_json::Value;

use crate::{
    error::OpenRouterError,
    responses::{error_text, ResponsesReply, WireUsage},
};

#[derive(Deserialize, Default)]
struct WireText {
    content: Option<Value>,
}

#[derive(Deserialize, Default)]
struct WireChoice {
    message: Option<WireText>,
    delta: Option<WireText>,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct WireChat {
    id: Option<String>,
    model: Option<String>,
    provider: Option<String>,
    choices: Option<Vec<WireChoice>>,
    usage: Option<WireUsage>,
    error: Option<Value>,
}

fn text_of(v: &Option<WireText>) -> Option<&str> {
    v.as_ref()?.content.as_ref()?.as_str()
}

/// Folds one chat object (a whole completion or one chunk) into `reply`;
/// returns whether it carried an error.
fn apply(
    reply: &mut ResponsesReply,
    w: WireChat,
    text: &mut String,
) -> Result<bool, OpenRouterError> {
    reply.note_origin(w.id, w.model, w.provider);
    let mut failed = false;
    for c in w.choices.iter().flatten() {
        if let Some(t) = text_of(&c.message).or_else(|| text_of(&c.delta)) {
            text.push_str(t);
        }
        if c.finish_reason.as_deref() == Some("error") {
            failed = true;
        }
    }
    if let Some(e) = w.error.as_ref().and_then(error_text) {
        reply.error = Some(e);
        failed = true;
    }
    if failed {
        reply.status = Some("failed".to_owned());
        reply
            .error
            .get_or_insert_with(|| "the generation failed mid-stream".to_owned());
    }
    reply.note_usage(w.usage, 200)?;
    Ok(failed)
}

/// Parses a non-streaming chat-completions `200` body; `header_id` is the
/// `X-Generation-Id` header (empty when absent).
pub fn chat_reply_from_body(
    header_id: &str,
    body: &[u8],
) -> Result<ResponsesReply, OpenRouterError> {
    let w: WireChat = serde_json::from_slice(body).map_err(|e| {
        OpenRouterError::malformed(200, format!("body is not a chat completion: {e}"))
    })?;
    let mut reply = ResponsesReply::for_header(header_id);
    let mut text = String::new();
    let failed = apply(&mut reply, w, &mut text)?;
    reply.output_text = text;
    if !failed {
        reply.status = Some("completed".to_owned());
    }
    reply.with_generation_id()
}

/// Folds the chunks of a chat-completions stream into a reply.
#[derive(Debug, Default)]
pub struct ChatStreamAccumulator {
    reply: ResponsesReply,
    text: String,
    done: bool,
    failed: bool,
}

impl ChatStreamAccumulator {
    /// An accumulator for a stream whose `X-Generation-Id` header was
    /// `header_id` (empty when absent).
    pub fn new(header_id: &str) -> Self {
        ChatStreamAccumulator {
            reply: ResponsesReply::for_header(header_id),
            ..ChatStreamAccumulator::default()
        }
    }

    /// Applies one event's `data`.
    pub fn event(&mut self, data: &str) -> Result<(), OpenRouterError> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let w: WireChat = serde_json::from_str(data).map_err(|e| {
            OpenRouterError::malformed(200, format!("unreadable stream chunk: {e}"))
        })?;
        if apply(&mut self.reply, w, &mut self.text)? {
            self.failed = true;
        }
        Ok(())
    }

    /// The reply: `aborted` when the stream ended with neither `[DONE]`
    /// nor usage nor an error. Fails when it never revealed a generation id.
    pub fn finish(mut self) -> Result<ResponsesReply, OpenRouterError> {
        self.reply.output_text = self.text;
        let finished = self.done || self.failed || self.reply.usage.is_some();
        if !finished {
            self.reply.aborted = true;
            self.reply.usage = None;
        } else if !self.failed {
            self.reply.status = Some("completed".to_owned());
        }
        self.reply.streamed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::SseParser;

    use tally_money::cost;

    #[test]
    fn the_chat_completion_example_parses_with_every_cost_field() {
        let r = chat_reply_from_body("", include_bytes!("../tests/fixtures/chat-completion.json"))
            .unwrap();
        assert_eq!(r.generation_id, "gen-1732531200-Xa81bQ0sPfTz4kLmN2vR");
        assert_eq!(r.output_text, "Four.");
        assert_eq!(r.status.as_deref(), Some("completed"));
        let u = r.usage.unwrap();
        assert_eq!(u.cost, Some(cost!("0.00012345678901234567")));
        assert_eq!(
            u.upstream_inference_cost,
            Some(cost!("0.00012345678901234567"))
        );
        assert_eq!(u.upstream_inference_input_cost, Some(cost!("0.0000987654")));
        assert_eq!(
            u.upstream_inference_output_cost,
            Some(cost!("0.00002469138901234567"))
        );
        assert_eq!(u.cached_tokens, Some(64));
        assert_eq!(u.actual_cost(), Some(cost!("0.00012345678901234567")));
    }

    #[test]
    fn the_chat_stream_example_folds_to_its_usage() {
        let mut acc = ChatStreamAccumulator::new("");
        for ev in SseParser::new()
            .push(include_bytes!("../tests/fixtures/chat-stream.sse"))
            .unwrap()
        {
            acc.event(&ev.data).unwrap();
        }
        let r = acc.finish().unwrap();
        assert!(!r.aborted);
        assert_eq!(r.output_text, "Four.");
        assert_eq!(r.usage.unwrap().cost, Some(cost!("0.00012345678901234567")));
    }

    #[test]
    fn mid_stream_errors_and_cuts() {
        let mut acc = ChatStreamAccumulator::new("gen-1");
        acc.event(r#"{"id":"gen-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Fo"},"finish_reason":null}]}"#).unwrap();
        acc.event(r#"{"id":"gen-1","object":"chat.completion.chunk","error":{"code":502,"message":"Provider disconnected"},"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}"#).unwrap();
        acc.event("[DONE]").unwrap();
        let r = acc.finish().unwrap();
        assert!(!r.aborted);
        assert_eq!(r.status.as_deref(), Some("failed"));
        assert_eq!(r.error.as_deref(), Some("Provider disconnected"));
        assert_eq!(r.usage, None);
        assert_eq!(r.output_text, "Fo");

        let mut acc = ChatStreamAccumulator::new("gen-2");
        acc.event(r#"{"id":"gen-2","choices":[{"index":0,"delta":{"content":"Fo"},"finish_reason":null}]}"#).unwrap();
        let r = acc.finish().unwrap();
        assert!(r.aborted);
        assert_eq!(
            ChatStreamAccumulator::new("").finish().unwrap_err().code(),
            "transport"
        );
        let neg = br#"{"id":"g","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"cost":-1}}"#;
        assert_eq!(
            chat_reply_from_body("", neg).unwrap_err().code(),
            "malformed_reply"
        );
    }
}
