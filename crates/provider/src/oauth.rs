//! OAuth PKCE helpers: the code verifier and its S256 challenge, the
//! single-use state token, the authorize URL, and OpenRouter's rule for the
//! public URL the callback lives under.
//!
//! # Invariants
//!
//! * The verifier is 32 random bytes from the operating system's generator,
//!   base64url without padding (43 characters); the challenge is the
//!   base64url SHA-256 of it (`S256`).
//! * The state token is 32 random bytes, base64url; only its SHA-256 is
//!   stored, so a database reader cannot complete someone's flow.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use rand::{RngCore, TryRngCore};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use url::Url;

/// How long a started OAuth flow may take (10 minutes).
pub const STATE_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// The path of the callback below `TALLY_PUBLIC_URL`.
pub const CALLBACK_PATH: &str = "/v1/providers/openrouter/oauth/callback";

fn random_b64(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    // The operating system's generator (a failure to read it aborts).
    rand::rngs::OsRng.unwrap_err().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A PKCE pair.
#[derive(Debug)]
pub struct Pkce {
    /// The code verifier (secret until the exchange).
    pub verifier: SecretString,
    /// Its S256 challenge (sent to the browser).
    pub challenge: String,
}

impl Pkce {
    /// A fresh verifier and its challenge.
    pub fn generate() -> Pkce {
        let verifier = random_b64(32);
        let challenge = s256(&verifier);
        Pkce {
            verifier: SecretString::from(verifier),
            challenge,
        }
    }
}

/// `S256(verifier)`: base64url (no padding) of its SHA-256.
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A fresh state token and the SHA-256 that is stored for it.
pub fn new_state() -> (SecretString, Vec<u8>) {
    let token = random_b64(32);
    let digest = state_digest(&token);
    (SecretString::from(token), digest)
}

/// The stored form of a state token.
pub fn state_digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Whether OpenRouter accepts `url` as a callback base: HTTPS on port 443
/// or 3000, or any scheme (http/https) and port on localhost, 127.0.0.1 or
/// [::1]. Returns the parsed URL without a trailing `/`, or why not.
pub fn validate_public_url(text: &str) -> Result<Url, String> {
    let u = Url::parse(text.trim()).map_err(|e| format!("{text:?} is not a URL ({e})"))?;
    if u.query().is_some() || u.fragment().is_some() {
        return Err(format!("{text:?} must not have a query or fragment"));
    }
    let local = matches!(
        u.host(),
        Some(url::Host::Domain("localhost"))
            | Some(url::Host::Ipv4(std::net::Ipv4Addr::LOCALHOST))
            | Some(url::Host::Ipv6(std::net::Ipv6Addr::LOCALHOST))
    );
    let ok = if local {
        matches!(u.scheme(), "http" | "https")
    } else {
        u.scheme() == "https" && matches!(u.port_or_known_default(), Some(443 | 3000))
    };
    if !ok {
        return Err(format!(
            "{text:?} must be HTTPS on port 443 or 3000, or any port on localhost, 127.0.0.1 or [::1] \
             (OpenRouter's rule for OAuth callbacks)"
        ));
    }
    Ok(u)
}

/// The callback URL for `state`: `<public>/v1/providers/openrouter/oauth/callback?state=…`.
pub fn callback_url(public: &Url, state: &SecretString) -> String {
    let base = public.as_str().trim_end_matches('/');
    let mut u = Url::parse(&format!("{base}{CALLBACK_PATH}")).unwrap_or_else(|_| public.clone());
    u.query_pairs_mut()
        .append_pair("state", state.expose_secret());
    u.to_string()
}

/// The URL the browser goes to:
/// `<auth_url>?callback_url=<callback, URL-encoded>&code_challenge=…&code_challenge_method=S256`.
pub fn authorize_url(
    auth_url: &str,
    public: &Url,
    state: &SecretString,
    challenge: &str,
) -> Result<String, String> {
    let mut u = Url::parse(auth_url).map_err(|e| format!("{auth_url:?} is not a URL ({e})"))?;
    u.query_pairs_mut()
        .append_pair("callback_url", &callback_url(public, state))
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256");
    Ok(u.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_url_follows_openrouters_rule() {
        for ok in [
            "https://tally.example.com",
            "https://tally.example.com:443/",
            "https://tally.example.com:3000",
            "http://localhost:8080",
            "http://127.0.0.1:9",
            "https://[::1]:4443",
        ] {
            assert!(validate_public_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://tally.example.com",
            "https://tally.example.com:8443",
            "ftp://localhost",
            "tally.example.com",
            "https://tally.example.com/?x=1",
            "http://10.0.0.1:8080",
        ] {
            let e = validate_public_url(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
    }

    #[test]
    fn pkce_and_state_are_random_and_well_formed() {
        let a = Pkce::generate();
        let b = Pkce::generate();
        assert_eq!(a.verifier.expose_secret().len(), 43);
        assert_ne!(a.verifier.expose_secret(), b.verifier.expose_secret());
        assert_eq!(a.challenge, s256(a.verifier.expose_secret()));
        assert!(!format!("{a:?}").contains(a.verifier.expose_secret()));
        let (t, d) = new_state();
        assert_eq!(d, state_digest(t.expose_secret()));
        assert_eq!(d.len(), 32);
    }

    #[test]
    fn authorize_url_carries_the_state_inside_the_callback() {
        let public = validate_public_url("http://127.0.0.1:8080").unwrap();
        let state = SecretString::from("st-ate".to_owned());
        let u = authorize_url("https://openrouter.ai/auth", &public, &state, "CH").unwrap();
        assert_eq!(
            u,
            "https://openrouter.ai/auth?callback_url=http%3A%2F%2F127.0.0.1%3A8080%2Fv1%2Fproviders%2Fopenrouter%2Foauth%2Fcallback%3Fstate%3Dst-ate&code_challenge=CH&code_challenge_method=S256"
        );
    }
}
