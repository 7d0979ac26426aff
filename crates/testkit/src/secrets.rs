//! A scanner for secrets that must never come back: stored provider keys,
//! OAuth tokens, key-encryption keys, API keys. Tests register every secret
//! they hand to tally, then pass every API response body and every captured
//! log line of the processes they ran through [`SecretScanner::check`].
//!
//! # What counts as a leak
//!
//! * The whole secret, anywhere in the text.
//! * Any [`FRAGMENT_CHARS`]-character piece of it: a truncated log line, a
//!   key cut at a column width, or a "masked" form that shows too much is
//!   still a leak. OpenRouter's own masked label (`sk-or-v1-abc...xyz`, three
//!   characters each side) is shorter than a fragment and passes.
//! * The secret's standard and URL-safe base64 forms (a secret put in a
//!   header or a JSON blob encoded).
//!
//! Secrets shorter than [`FRAGMENT_CHARS`] are matched whole only.

use base64::Engine as _;

/// Length of the pieces of a secret that count as a leak on their own.
pub const FRAGMENT_CHARS: usize = 16;

/// Where a secret was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    /// What was scanned (a response, a log).
    pub source: String,
    /// The name the secret was registered under (never the secret).
    pub secret: String,
    /// Line number (1-based) of the first hit.
    pub line: usize,
    /// How it was found: `whole`, `fragment`, `base64`.
    pub how: &'static str,
}

impl std::fmt::Display for Leak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "secret {:?} found ({}) in {} at line {}",
            self.secret, self.how, self.source, self.line
        )
    }
}

/// Secrets to look for; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct SecretScanner {
    secrets: Vec<(String, String)>,
    scanned: usize,
}

impl SecretScanner {
    /// An empty scanner.
    pub fn new() -> SecretScanner {
        SecretScanner::default()
    }

    /// Registers a secret under a name that may be shown in a failure.
    pub fn watch(&mut self, name: impl Into<String>, secret: impl Into<String>) -> &mut Self {
        let secret = secret.into();
        if !secret.is_empty() {
            self.secrets.push((name.into(), secret));
        }
        self
    }

    /// How many texts were scanned so far (so a test can assert it scanned
    /// what it meant to).
    pub fn scanned(&self) -> usize {
        self.scanned
    }

    /// The leaks of `text` (empty when it is clean).
    pub fn scan(&mut self, source: &str, text: &str) -> Vec<Leak> {
        self.scanned += 1;
        let mut leaks = Vec::new();
        for (name, secret) in &self.secrets {
            if let Some((line, how)) = find(text, secret) {
                leaks.push(Leak {
                    source: source.to_owned(),
                    secret: name.clone(),
                    line,
                    how,
                });
            }
        }
        leaks
    }

    /// Fails with every leak of `text`, naming the source, the secret's
    /// name and the line (never the secret).
    pub fn check(&mut self, source: &str, text: &str) -> anyhow::Result<()> {
        let leaks = self.scan(source, text);
        if leaks.is_empty() {
            return Ok(());
        }
        let all: Vec<String> = leaks.iter().map(ToString::to_string).collect();
        anyhow::bail!("{}", all.join("; "))
    }
}

fn line_of(text: &str, at: usize) -> usize {
    text[..at].bytes().filter(|b| *b == b'\n').count() + 1
}

fn find(text: &str, secret: &str) -> Option<(usize, &'static str)> {
    if let Some(at) = text.find(secret) {
        return Some((line_of(text, at), "whole"));
    }
    let chars: Vec<(usize, char)> = secret.char_indices().collect();
    if chars.len() > FRAGMENT_CHARS {
        for i in 0..=chars.len() - FRAGMENT_CHARS {
            let start = chars[i].0;
            let end = chars
                .get(i + FRAGMENT_CHARS)
                .map_or(secret.len(), |(b, _)| *b);
            if let Some(at) = text.find(&secret[start..end]) {
                return Some((line_of(text, at), "fragment"));
            }
        }
    }
    for enc in [
        base64::engine::general_purpose::STANDARD.encode(secret),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
    ] {
        // The encoding's first characters depend only on the secret's
        // first bytes; look for a stretch long enough to be the secret's.
        let probe = &enc[..enc.len().min(FRAGMENT_CHARS + 4)];
        if probe.len() >= FRAGMENT_CHARS {
            if let Some(at) = text.find(probe) {
                return Some((line_of(text, at), "base64"));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-or-v1-0123456789abcdef0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn finds_whole_cut_and_encoded_secrets_but_not_the_masked_label() {
        let mut s = SecretScanner::new();
        s.watch("acme's key", KEY);
        assert!(s
            .scan("body", r#"{"key_label":"sk-or-v1-012...567"}"#)
            .is_empty());
        let l = s.scan("log", &format!("a\nb {KEY} c"));
        assert_eq!((l[0].line, l[0].how), (2, "whole"));
        assert!(!l[0].to_string().contains(KEY));
        let cut = &KEY[20..40];
        assert_eq!(s.scan("log", cut)[0].how, "fragment");
        let b64 = base64::engine::general_purpose::STANDARD.encode(KEY);
        assert_eq!(s.scan("log", &b64)[0].how, "base64");
        assert!(s.check("body", "nothing here").is_ok());
        assert!(s.check("body", KEY).is_err());
        assert_eq!(s.scanned(), 6);
    }
}
