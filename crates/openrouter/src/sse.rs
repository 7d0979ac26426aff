//! A small, incremental parser for server-sent events (the `text/event-stream`
//! format OpenRouter streams generations in).
//!
//! Bytes go in as they arrive ([`SseParser::push`]); complete events come
//! out. Comment lines (`: OPENROUTER PROCESSING`) are skipped, `data:` lines
//! of one event are joined with `\n`, and a blank line ends an event.
//!
//! # Decisions
//!
//! * **Own parser instead of a crate.** The format needs a few dozen lines;
//!   the parser is byte-oriented so a UTF-8 character split across network
//!   chunks is never mangled, and it bounds the length of one line
//!   ([`MAX_LINE`]) so a stream without newlines cannot fill memory.
//! * **An unterminated event at the end of the stream is dropped**, as the
//!   SSE specification says: a cut connection must not be mistaken for a
//!   complete final event.

/// The longest line accepted (8 MiB; a final event carries the whole
/// response, which is rarely more than a few hundred KiB).
pub const MAX_LINE: usize = 8 * 1024 * 1024;

/// One server-sent event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, when sent.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The `id:` field, when sent.
    pub id: Option<String>,
}

/// A line longer than [`MAX_LINE`] arrived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server-sent event line longer than {MAX_LINE} bytes")]
pub struct LineTooLong;

/// Incremental SSE parser.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    data: String,
    has_data: bool,
    id: Option<String>,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        SseParser::default()
    }

    /// Feeds `chunk`; returns the events it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, LineTooLong> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|b| *b == b'\n') {
            let end = start + pos;
            let mut line = &self.buf[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line = String::from_utf8_lossy(line).into_owned();
            start = end + 1;
            if let Some(event) = self.line(&line) {
                out.push(event);
            }
        }
        self.buf.drain(..start);
        if self.buf.len() > MAX_LINE {
            return Err(LineTooLong);
        }
        Ok(out)
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let event = self.event.take();
            let id = self.id.take();
            if !self.has_data {
                return None;
            }
            self.has_data = false;
            let mut data = std::mem::take(&mut self.data);
            if data.ends_with('\n') {
                data.pop();
            }
            return Some(SseEvent { event, data, id });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            "id" => self.id = Some(value.to_owned()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_openrouter_chat_stream_fixture_in_any_chunking() {
        let text = include_str!("../tests/fixtures/chat-stream.sse");
        let whole = SseParser::new().push(text.as_bytes()).unwrap();
        assert_eq!(whole.len(), 4);
        assert!(whole[2].data.contains("\"usage\""));
        assert_eq!(whole[3].data, "[DONE]");
        for size in [1, 2, 7, 64] {
            let mut p = SseParser::new();
            let mut events = Vec::new();
            for chunk in text.as_bytes().chunks(size) {
                events.extend(p.push(chunk).unwrap());
            }
            assert_eq!(events, whole, "chunks of {size}");
        }
    }

    #[test]
    fn fields_multiline_data_crlf_and_unterminated_events() {
        let mut p = SseParser::new();
        let events = p
            .push(b"event: response.created\r\ndata: {\"a\":\r\ndata:1}\r\nid: 7\r\n\r\n: ping\n\ndata: cut")
            .unwrap();
        assert_eq!(
            events,
            vec![SseEvent {
                event: Some("response.created".into()),
                data: "{\"a\":\n1}".into(),
                id: Some("7".into()),
            }]
        );
        // The last event never got its blank line: nothing more comes out.
        assert_eq!(p.push(b"").unwrap(), vec![]);
    }

    #[test]
    fn split_utf8_is_kept_intact() {
        let text = "data: é€\n\n".as_bytes();
        let mut p = SseParser::new();
        let mut events = p.push(&text[..7]).unwrap();
        events.extend(p.push(&text[7..]).unwrap());
        assert_eq!(events[0].data, "é€");
    }
}
