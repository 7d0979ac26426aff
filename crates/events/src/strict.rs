//! The one strict reading of JSON that both doors of tally use: the bus
//! (every event body goes through it in [`crate::decode()`]) and the HTTP
//! API (every request body goes through it before its typed decoding).
//!
//! [`parse`] reads a document into a [`serde_json::Value`] like
//! `serde_json::from_slice`, and refuses, naming the field's path
//! (`data.usage.prompt_tokens`, `items[2].name`):
//!
//! * **an object with the same key twice** ([`StrictError::DuplicateKey`]).
//!   A plain reading keeps the last value, so two readers of the same bytes
//!   (a schema validator, a log pipeline, tally) could disagree about what
//!   a message says; 10 000 repeats of a key would also be read at no cost.
//! * **a string or key holding a C0 control character other than tab, line
//!   feed and carriage return** ([`StrictError::ControlCharacter`]). NUL
//!   cannot be stored in a Postgres `text` column at all, and the others
//!   have no business in any field tally keeps; free text (prompts, error
//!   messages) may hold `\t`, `\n` and `\r`. Identifiers and names are
//!   stricter still (no control character at all): their own checks say so.
//!
//! # Invariants
//!
//! * Whatever [`parse`] accepts, `serde_json::from_slice` accepts and reads
//!   to the same value; nesting is limited by serde_json's own recursion
//!   limit (128), so a deeply nested document is a syntax error, never a
//!   stack overflow.
//! * No allocation for paths on the happy path: the path of a refusal is
//!   built while unwinding from the offending value.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Longest part of user input repeated in a refusal, in characters.
pub const EXCERPT_CHARS: usize = 64;

/// Why [`parse`] refused a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StrictError {
    /// Not JSON (serde_json's message, which names line and column).
    Syntax(String),
    /// An object holds the key at `path` twice.
    DuplicateKey {
        /// Path of the repeated key, e.g. `data.usage.prompt_tokens`.
        path: String,
    },
    /// The string (or key) at `path` holds a forbidden control character.
    ControlCharacter {
        /// Path of the string, e.g. `data.agent_id`.
        path: String,
    },
}

impl fmt::Display for StrictError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StrictError::Syntax(m) => write!(f, "malformed JSON: {m}"),
            StrictError::DuplicateKey { path } => {
                write!(f, "{path}: the key is given more than once")
            }
            StrictError::ControlCharacter { path } => write!(
                f,
                "{path}: holds a control character (NUL and other C0 controls are refused)"
            ),
        }
    }
}

impl std::error::Error for StrictError {}

/// Whether `c` is refused in any JSON string: a C0 control other than tab,
/// line feed and carriage return.
pub fn is_forbidden_in_text(c: char) -> bool {
    c < '\u{20}' && !matches!(c, '\t' | '\n' | '\r')
}

/// Whether `s` holds any control character (C0, DEL or C1): refused in
/// identifiers, names and scope values.
pub fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// At most [`EXCERPT_CHARS`] characters of `s`, with control characters
/// shown as `\u{..}` escapes and `…` when cut: what a refusal may repeat of
/// user input, so an error is never larger than the input's first bytes.
pub fn excerpt(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == EXCERPT_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// Serde `deserialize_with` helper for a struct field that must be a JSON
/// object: serde's derived structs also accept an array, read positionally
/// (`"scope": ["a", "s", "u", "m"]`), which a reader of the JSON cannot
/// tell apart from a list. Paths of errors inside the object are kept.
pub fn object_only<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: de::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    struct ObjectOnly<T>(std::marker::PhantomData<T>);

    impl<'de, T: serde::Deserialize<'de>> Visitor<'de> for ObjectOnly<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(de::value::MapAccessDeserializer::new(map))
        }
    }

    d.deserialize_map(ObjectOnly(std::marker::PhantomData))
}

/// [`object_only`] for an optional field: `null` (or absence, with
/// `#[serde(default)]`) is `None`, an object is read, anything else (an
/// array read positionally above all) is refused.
pub fn object_only_opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: de::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    struct OptObject<T>(std::marker::PhantomData<T>);

    impl<'de, T: serde::Deserialize<'de>> Visitor<'de> for OptObject<T> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object or null")
        }

        fn visit_none<E: de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }

        fn visit_some<D2: de::Deserializer<'de>>(self, d: D2) -> Result<Option<T>, D2::Error> {
            object_only(d).map(Some)
        }
    }

    d.deserialize_option(OptObject(std::marker::PhantomData))
}

/// Parses `bytes` strictly; see the module docs.
pub fn parse(bytes: &[u8]) -> Result<Value, StrictError> {
    let found = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let result = Seed { found: &found }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    match result {
        Ok(v) => Ok(v),
        Err(e) => Err(match found.into_inner() {
            Some(f) => f.into_error(),
            None => StrictError::Syntax(e.to_string()),
        }),
    }
}

enum Kind {
    Duplicate,
    Control,
}

enum Segment {
    Key(String),
    Index(usize),
}

/// A refusal, with its path collected innermost first while unwinding.
struct Found {
    kind: Kind,
    rev_path: Vec<Segment>,
}

impl Found {
    fn into_error(self) -> StrictError {
        let mut path = String::new();
        for seg in self.rev_path.iter().rev() {
            match seg {
                Segment::Key(k) => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(&excerpt(k));
                }
                Segment::Index(i) => path.push_str(&format!("[{i}]")),
            }
        }
        if path.is_empty() {
            path.push_str("(document)");
        }
        match self.kind {
            Kind::Duplicate => StrictError::DuplicateKey { path },
            Kind::Control => StrictError::ControlCharacter { path },
        }
    }
}

#[derive(Clone, Copy)]
struct Seed<'a> {
    found: &'a RefCell<Option<Found>>,
}

impl Seed<'_> {
    fn refuse<E: de::Error>(&self, kind: Kind, at: Option<Segment>) -> E {
        *self.found.borrow_mut() = Some(Found {
            kind,
            rev_path: at.into_iter().collect(),
        });
        E::custom("refused by the strict JSON reading")
    }

    fn unwind(&self, seg: Segment) {
        if let Some(f) = self.found.borrow_mut().as_mut() {
            f.rev_path.push(seg);
        }
    }
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON has no NaN or infinity, so this is always a number.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.visit_string(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        if v.chars().any(is_forbidden_in_text) {
            return Err(self.refuse(Kind::Control, None));
        }
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        loop {
            match seq.next_element_seed(self) {
                Ok(Some(v)) => out.push(v),
                Ok(None) => return Ok(Value::Array(out)),
                Err(e) => {
                    self.unwind(Segment::Index(out.len()));
                    return Err(e);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if key.chars().any(is_forbidden_in_text) {
                return Err(self.refuse(Kind::Control, Some(Segment::Key(key))));
            }
            if out.contains_key(&key) {
                return Err(self.refuse(Kind::Duplicate, Some(Segment::Key(key))));
            }
            match map.next_value_seed(self) {
                Ok(v) => {
                    out.insert(key, v);
                }
                Err(e) => {
                    self.unwind(Segment::Key(key));
                    return Err(e);
                }
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_like_serde_json() {
        let text = br#"{"a":[1,-2,3.5,"x\ny",null,true,{"b":{}}],"c":"\u00e9"}"#;
        let strict = parse(text).unwrap();
        let plain: Value = serde_json::from_slice(text).unwrap();
        assert_eq!(strict, plain);
    }

    #[test]
    fn duplicate_keys_are_refused_with_their_path() {
        let e = parse(br#"{"data":{"usage":{"p":1,"p":2}}}"#).unwrap_err();
        assert_eq!(
            e,
            StrictError::DuplicateKey {
                path: "data.usage.p".into()
            }
        );
        let e = parse(br#"[{"a":1},{"a":1,"a":1}]"#).unwrap_err();
        assert_eq!(
            e,
            StrictError::DuplicateKey {
                path: "[1].a".into()
            }
        );
    }

    #[test]
    fn control_characters_are_refused_with_their_path() {
        let e = parse(br#"{"data":{"agent_id":"a\u0000b"}}"#).unwrap_err();
        assert_eq!(
            e,
            StrictError::ControlCharacter {
                path: "data.agent_id".into()
            }
        );
        let e = parse(br#"{"x":["ok","\u001b[31m"]}"#).unwrap_err();
        assert_eq!(
            e,
            StrictError::ControlCharacter {
                path: "x[1]".into()
            }
        );
        let e = parse(b"{\"k\\u0000\":1}").unwrap_err();
        assert!(matches!(e, StrictError::ControlCharacter { .. }));
        assert!(parse(br#"{"prompt":"line 1\nline\t2\r\n"}"#).is_ok());
    }

    #[test]
    fn syntax_errors_and_nesting() {
        assert!(matches!(parse(b"{\"a\":"), Err(StrictError::Syntax(_))));
        assert!(matches!(parse(b"{} x"), Err(StrictError::Syntax(_))));
        let deep = "[".repeat(100_000);
        assert!(matches!(
            parse(deep.as_bytes()),
            Err(StrictError::Syntax(_))
        ));
    }

    #[test]
    fn excerpts_are_bounded() {
        let long = "x".repeat(10_000);
        assert_eq!(excerpt(&long).chars().count(), EXCERPT_CHARS + 1);
        assert_eq!(excerpt("a\u{0}b"), "a\\u{0}b");
    }
}
