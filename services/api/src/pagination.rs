//! Cursor pagination shared by every list of the API.
//!
//! A list answers at most `limit` items (default [`DEFAULT_PAGE`], at most
//! [`MAX_PAGE`]; anything else is 422 `invalid_field` naming `limit`) and a
//! `next_cursor`: `null` on the last page, else the value to pass as
//! `cursor` for the next one. Cursors are opaque to clients; each list
//! documents its order, and keyset cursors (the last key seen) never skip or
//! repeat an item while the list grows.

use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::Params;

/// Items per page when `limit` is not given.
pub const DEFAULT_PAGE: i64 = 100;
/// Largest `limit`.
pub const MAX_PAGE: i64 = 1000;

/// Longest cursor accepted, in bytes.
const MAX_CURSOR_CHARS: usize = 1024;

/// A page request: `limit` and the raw `cursor` (`None` for the first page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Page {
    pub limit: i64,
    pub cursor: Option<String>,
}

impl Page {
    /// Reads `limit` and `cursor` from the query (the limit checked first).
    pub fn from_params(params: &Params) -> Result<Page, ApiError> {
        let limit = limit(params)?;
        let cursor = cursor(params)?;
        Ok(Page { limit, cursor })
    }

    /// The cursor as the UUID of a keyset list (`None` on the first page).
    pub fn uuid_cursor(&self) -> Result<Option<Uuid>, ApiError> {
        self.cursor.as_deref().map(parse_uuid).transpose()
    }
}

/// The `limit` of the query: [`DEFAULT_PAGE`] when not given.
pub(crate) fn limit(params: &Params) -> Result<i64, ApiError> {
    match params.get("limit") {
        None => Ok(DEFAULT_PAGE),
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_PAGE).contains(l))
            .ok_or_else(|| {
                ApiError::invalid(
                    "limit",
                    format!("limit must be an integer from 1 to {MAX_PAGE}"),
                )
            }),
    }
}

/// The raw `cursor` of the query (`None` when absent or empty).
pub(crate) fn cursor(params: &Params) -> Result<Option<String>, ApiError> {
    match params.get("cursor") {
        None | Some("") => Ok(None),
        Some(c) if c.chars().count() > MAX_CURSOR_CHARS || c.chars().any(char::is_control) => {
            Err(bad_cursor())
        }
        Some(c) => Ok(Some(c.to_owned())),
    }
}

/// The `cursor` of the query as a UUID (`None` when absent or empty).
pub(crate) fn uuid_cursor(params: &Params) -> Result<Option<Uuid>, ApiError> {
    cursor(params)?.as_deref().map(parse_uuid).transpose()
}

fn parse_uuid(cursor: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(cursor).map_err(|_| bad_cursor())
}

/// The refusal of a cursor that no page handed out.
pub(crate) fn bad_cursor() -> ApiError {
    ApiError::invalid(
        "cursor",
        "cursor must be a next_cursor value from a previous page",
    )
}

/// Hex encoding of a text key, for cursors over arbitrary text.
pub(crate) fn encode_key(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The inverse of [`encode_key`].
pub(crate) fn decode_key(cursor: &str) -> Result<String, ApiError> {
    if cursor.len() % 2 != 0 {
        return Err(bad_cursor());
    }
    let bytes = (0..cursor.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(cursor.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad_cursor())?;
    String::from_utf8(bytes).map_err(|_| bad_cursor())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for k in ["", "openai/gpt-4o", "é ü"] {
            assert_eq!(decode_key(&encode_key(k)).unwrap(), k);
        }
        assert!(decode_key("abc").is_err());
        assert!(decode_key("zz").is_err());
    }
}
