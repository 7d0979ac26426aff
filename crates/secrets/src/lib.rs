//! Envelope encryption of the secrets tally keeps for organisations
//! (provider API keys obtained by pasting or by OAuth).
//!
//! A secret is sealed with a fresh 256-bit **data key** under AES-256-GCM;
//! the data key itself is wrapped (AES-256-GCM again) by the
//! **key-encryption key** configured as `TALLY_SECRETS_KEY`. What is stored
//! is a [`Sealed`] value: the key-encryption key's id, the wrapped data key
//! and the ciphertext, each with its own nonce. Plaintext never touches the
//! database.
//!
//! * [`Keyring::from_settings`] parses `TALLY_SECRETS_KEY`
//!   (`<key_id>:<base64 of 32 bytes>`) and `TALLY_SECRETS_KEY_PREVIOUS`
//!   (a comma-separated list of the same form).
//! * [`Keyring::seal`] / [`Keyring::open`] encrypt and decrypt one secret
//!   for one [`Context`] (organisation, provider, field).
//! * [`Keyring::rewrap`] re-wraps a sealed secret's data key under the
//!   current key-encryption key without touching its ciphertext (what
//!   `tally secrets rotate` does for every row).
//!
//! # Invariants
//!
//! * **Bound to its place.** The [`Context`] is the associated data of both
//!   encryptions, so a ciphertext copied to another organisation's row, to
//!   another provider or into another field does not decrypt
//!   ([`SecretsError::DecryptFailed`]).
//! * **Never printed.** Plaintexts are [`SecretString`]s (their `Debug`
//!   prints `[REDACTED]`); key material is never part of an error message.
//! * **Fresh randomness.** Every seal draws a new data key and new 96-bit
//!   nonces from the operating system's generator; nothing is reused.
//!
//! # Decisions
//!
//! * **Envelope, not direct encryption.** Rotating the key-encryption key
//!   then means re-wrapping 32-byte data keys, not re-encrypting every
//!   secret, and the old key can be dropped as soon as every row is
//!   re-wrapped ([`Keyring::rewrap`], [`Keyring::needs_rewrap`]).
//! * **AES-256-GCM** (the `aes-gcm` crate, RustCrypto): an AEAD in wide use,
//!   hardware-accelerated where AES-NI exists, with associated data for the
//!   binding above. Random 96-bit nonces are safe at this volume (one
//!   encryption per stored secret, far below the 2³² bound per key).
//! * **Key ids in the stored value.** A sealed secret names the key that
//!   wrapped it, so several keys can be in service during a rotation and an
//!   unknown id is a specific error ([`SecretsError::UnknownKeyId`]) rather
//!   than a failed decryption.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
pub use secrecy::{ExposeSecret, SecretString};

/// Length of a key (key-encryption or data key), in bytes.
pub const KEY_BYTES: usize = 32;
/// Length of an AES-GCM nonce, in bytes.
pub const NONCE_BYTES: usize = 12;

/// Why a secret could not be sealed or opened. Each variant has a stable
/// [`code`](SecretsError::code) (problem types, log fields, metric labels).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    /// No key-encryption key is configured (`TALLY_SECRETS_KEY` unset).
    #[error("TALLY_SECRETS_KEY is not set: secrets cannot be stored or read")]
    KeyMissing,
    /// A configured key is not of the form `<key_id>:<base64 of 32 bytes>`.
    #[error("{setting}: {reason}")]
    KeyInvalid {
        /// The setting that holds the bad key.
        setting: &'static str,
        /// What is wrong with it (never the key material).
        reason: String,
    },
    /// The sealed value names a key-encryption key the keyring does not have.
    #[error("secret was wrapped by key {0:?}, which is neither TALLY_SECRETS_KEY nor in TALLY_SECRETS_KEY_PREVIOUS")]
    UnknownKeyId(String),
    /// Authentication failed: wrong key, tampered data, or a ciphertext that
    /// belongs to another organisation, provider or field.
    #[error("secret does not decrypt for this organisation, provider and field")]
    DecryptFailed,
    /// The stored value is structurally broken (wrong lengths).
    #[error("stored secret is malformed: {0}")]
    Malformed(&'static str),
}

impl SecretsError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            SecretsError::KeyMissing => "secrets_key_missing",
            SecretsError::KeyInvalid { .. } => "secrets_key_invalid",
            SecretsError::UnknownKeyId(_) => "secrets_key_unknown",
            SecretsError::DecryptFailed => "secret_decrypt_failed",
            SecretsError::Malformed(_) => "secret_malformed",
        }
    }
}

/// Where a secret belongs: the associated data of its encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context<'a> {
    /// The organisation that owns the secret.
    pub org_id: &'a str,
    /// The provider it is a credential for (`openrouter`).
    pub provider: &'a str,
    /// Which field of the connection it is (`api_key`).
    pub field: &'a str,
}

impl Context<'_> {
    /// Unambiguous byte form: each part length-prefixed, so `("a:b", "c")`
    /// and `("a", "b:c")` differ.
    fn aad(&self, layer: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        for part in [
            b"tally-secret-v1" as &[u8],
            layer,
            self.org_id.as_bytes(),
            self.provider.as_bytes(),
            self.field.as_bytes(),
        ] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }
}

/// A secret as stored: nothing in it reveals the plaintext or a key.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Id of the key-encryption key that wrapped the data key.
    pub kek_id: String,
    /// Nonce of the data-key wrapping.
    pub wrap_nonce: Vec<u8>,
    /// The data key, encrypted under the key-encryption key (32 bytes + tag).
    pub wrapped_key: Vec<u8>,
    /// Nonce of the secret's encryption.
    pub nonce: Vec<u8>,
    /// The secret, encrypted under the data key (plaintext length + tag).
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("kek_id", &self.kek_id)
            .field("ciphertext_bytes", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// One key-encryption key with its id.
struct Kek {
    id: String,
    cipher: Aes256Gcm,
}

/// The configured key-encryption keys: the current one, which wraps every
/// new secret, and the previous ones, which still unwrap.
pub struct Keyring {
    current: Kek,
    previous: Vec<Kek>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let previous: Vec<&str> = self.previous.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring")
            .field("current", &self.current.id)
            .field("previous", &previous)
            .finish()
    }
}

fn parse_kek(setting: &'static str, text: &str) -> Result<Kek, SecretsError> {
    let invalid = |reason: &str| SecretsError::KeyInvalid {
        setting,
        reason: reason.to_owned(),
    };
    let (id, b64) = text
        .trim()
        .split_once(':')
        .ok_or_else(|| invalid("expected <key_id>:<base64 of 32 bytes>"))?;
    let id_ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !id_ok {
        return Err(invalid("the key id must match ^[A-Za-z0-9_-]{1,64}$"));
    }
    let bytes = STANDARD
        .decode(b64)
        .map_err(|_| invalid("the key is not valid base64"))?;
    if bytes.len() != KEY_BYTES {
        return Err(invalid(&format!(
            "the key must be {KEY_BYTES} bytes, got {}",
            bytes.len()
        )));
    }
    Ok(Kek {
        id: id.to_owned(),
        cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)),
    })
}

/// A new random key-encryption key in the settings form
/// `<key_id>:<base64 of 32 bytes>` (for the demo, tests and operators).
pub fn generate_key_setting(key_id: &str) -> SecretString {
    let key = Aes256Gcm::generate_key(OsRng);
    SecretString::from(format!("{key_id}:{}", STANDARD.encode(key)))
}

impl Keyring {
    /// The keyring from `TALLY_SECRETS_KEY` and `TALLY_SECRETS_KEY_PREVIOUS`.
    /// `None` for the current key is [`SecretsError::KeyMissing`].
    pub fn from_settings(
        current: Option<&SecretString>,
        previous: Option<&SecretString>,
    ) -> Result<Keyring, SecretsError> {
        let current = current.ok_or(SecretsError::KeyMissing)?;
        let current = parse_kek("TALLY_SECRETS_KEY", current.expose_secret())?;
        let mut keys = Vec::new();
        if let Some(prev) = previous {
            for part in prev
                .expose_secret()
                .split(',')
                .filter(|p| !p.trim().is_empty())
            {
                let kek = parse_kek("TALLY_SECRETS_KEY_PREVIOUS", part)?;
                if kek.id == current.id || keys.iter().any(|k: &Kek| k.id == kek.id) {
                    return Err(SecretsError::KeyInvalid {
                        setting: "TALLY_SECRETS_KEY_PREVIOUS",
                        reason: format!("key id {:?} is given twice", kek.id),
                    });
                }
                keys.push(kek);
            }
        }
        Ok(Keyring {
            current,
            previous: keys,
        })
    }

    /// Id of the key that wraps new secrets.
    pub fn current_key_id(&self) -> &str {
        &self.current.id
    }

    fn kek(&self, id: &str) -> Result<&Kek, SecretsError> {
        std::iter::once(&self.current)
            .chain(self.previous.iter())
            .find(|k| k.id == id)
            .ok_or_else(|| SecretsError::UnknownKeyId(id.to_owned()))
    }

    /// Encrypts `plaintext` for `ctx` under a fresh data key.
    pub fn seal(&self, ctx: &Context<'_>, plaintext: &SecretString) -> Sealed {
        let data_key = Aes256Gcm::generate_key(OsRng);
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = Aes256Gcm::new(&data_key)
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.expose_secret().as_bytes(),
                    aad: &ctx.aad(b"data"),
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail"); // ok: infallible for these sizes
        let (wrap_nonce, wrapped_key) = self.wrap(&self.current, ctx, data_key.as_slice());
        Sealed {
            kek_id: self.current.id.clone(),
            wrap_nonce,
            wrapped_key,
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    fn wrap(&self, kek: &Kek, ctx: &Context<'_>, data_key: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = [ctx.aad(b"wrap"), kek.id.as_bytes().to_vec()].concat();
        let wrapped = kek
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: data_key,
                    aad: &aad,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail"); // ok: infallible for these sizes
        (nonce.to_vec(), wrapped)
    }

    fn unwrap_data_key(&self, ctx: &Context<'_>, sealed: &Sealed) -> Result<Vec<u8>, SecretsError> {
        let kek = self.kek(&sealed.kek_id)?;
        if sealed.wrap_nonce.len() != NONCE_BYTES || sealed.nonce.len() != NONCE_BYTES {
            return Err(SecretsError::Malformed("nonce length"));
        }
        let aad = [ctx.aad(b"wrap"), kek.id.as_bytes().to_vec()].concat();
        let key = kek
            .cipher
            .decrypt(
                Nonce::from_slice(&sealed.wrap_nonce),
                Payload {
                    msg: &sealed.wrapped_key,
                    aad: &aad,
                },
            )
            .map_err(|_| SecretsError::DecryptFailed)?;
        if key.len() != KEY_BYTES {
            return Err(SecretsError::Malformed("data key length"));
        }
        Ok(key)
    }

    /// Decrypts a sealed secret for `ctx`.
    pub fn open(&self, ctx: &Context<'_>, sealed: &Sealed) -> Result<SecretString, SecretsError> {
        let key = self.unwrap_data_key(ctx, sealed)?;
        let plain = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key))
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &ctx.aad(b"data"),
                },
            )
            .map_err(|_| SecretsError::DecryptFailed)?;
        let text = String::from_utf8(plain).map_err(|_| SecretsError::Malformed("not UTF-8"))?;
        Ok(SecretString::from(text))
    }

    /// Whether `sealed` is wrapped by a key other than the current one.
    pub fn needs_rewrap(&self, sealed: &Sealed) -> bool {
        sealed.kek_id != self.current.id
    }

    /// Re-wraps the data key of `sealed` under the current key-encryption
    /// key; the ciphertext is unchanged. Authenticates first, so a tampered
    /// or misplaced secret is reported, not laundered.
    pub fn rewrap(&self, ctx: &Context<'_>, sealed: &Sealed) -> Result<Sealed, SecretsError> {
        let key = self.unwrap_data_key(ctx, sealed)?;
        // Prove the ciphertext belongs to this context before vouching for it.
        self.open(ctx, sealed)?;
        let (wrap_nonce, wrapped_key) = self.wrap(&self.current, ctx, &key);
        Ok(Sealed {
            kek_id: self.current.id.clone(),
            wrap_nonce,
            wrapped_key,
            nonce: sealed.nonce.clone(),
            ciphertext: sealed.ciphertext.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACME: Context<'static> = Context {
        org_id: "acme",
        provider: "openrouter",
        field: "api_key",
    };

    fn ring(current: &SecretString, previous: Option<&SecretString>) -> Keyring {
        Keyring::from_settings(Some(current), previous).unwrap()
    }

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn a_sealed_secret_opens_for_its_own_context_only() {
        let k = ring(&generate_key_setting("k1"), None);
        let sealed = k.seal(&ACME, &secret("sk-or-v1-abc"));
        assert_eq!(
            k.open(&ACME, &sealed).unwrap().expose_secret(),
            "sk-or-v1-abc"
        );
        assert!(!sealed.ciphertext.windows(6).any(|w| w == b"sk-or-"));
        for other in [
            Context {
                org_id: "globex",
                ..ACME
            },
            Context {
                provider: "anthropic",
                ..ACME
            },
            Context {
                field: "oauth_key",
                ..ACME
            },
        ] {
            assert_eq!(
                k.open(&other, &sealed).unwrap_err().code(),
                "secret_decrypt_failed"
            );
        }
    }

    #[test]
    fn tampering_is_detected() {
        let k = ring(&generate_key_setting("k1"), None);
        let mut sealed = k.seal(&ACME, &secret("sk-or-v1-abc"));
        sealed.ciphertext[0] ^= 1;
        assert_eq!(
            k.open(&ACME, &sealed).unwrap_err().code(),
            "secret_decrypt_failed"
        );
        let mut sealed = k.seal(&ACME, &secret("sk-or-v1-abc"));
        sealed.wrapped_key[3] ^= 1;
        assert_eq!(
            k.open(&ACME, &sealed).unwrap_err().code(),
            "secret_decrypt_failed"
        );
    }

    #[test]
    fn rotation_rewraps_and_the_old_key_is_no_longer_needed() {
        let old = generate_key_setting("old");
        let new = generate_key_setting("new");
        let before = ring(&old, None);
        let sealed = before.seal(&ACME, &secret("sk-or-v1-xyz"));

        let during = ring(&new, Some(&old));
        assert!(during.needs_rewrap(&sealed));
        assert_eq!(
            during.open(&ACME, &sealed).unwrap().expose_secret(),
            "sk-or-v1-xyz"
        );
        let rewrapped = during.rewrap(&ACME, &sealed).unwrap();
        assert_eq!(rewrapped.kek_id, "new");
        assert!(!during.needs_rewrap(&rewrapped));

        let after = ring(&new, None);
        assert_eq!(
            after.open(&ACME, &rewrapped).unwrap().expose_secret(),
            "sk-or-v1-xyz"
        );
        assert_eq!(
            after.open(&ACME, &sealed).unwrap_err().code(),
            "secrets_key_unknown"
        );
    }

    #[test]
    fn bad_settings_name_the_setting_and_never_echo_the_key() {
        assert_eq!(
            Keyring::from_settings(None, None).unwrap_err().code(),
            "secrets_key_missing"
        );
        for bad in [
            "nocolon",
            ":AAAA",
            "k1:not-base64!",
            "k1:AAAA",
            "bad id:AAAA",
        ] {
            let e = Keyring::from_settings(Some(&secret(bad)), None).unwrap_err();
            assert_eq!(e.code(), "secrets_key_invalid", "{bad}");
            assert!(e.to_string().starts_with("TALLY_SECRETS_KEY:"), "{e}");
        }
        let cur = generate_key_setting("k1");
        let e = Keyring::from_settings(Some(&cur), Some(&cur)).unwrap_err();
        assert!(
            e.to_string().starts_with("TALLY_SECRETS_KEY_PREVIOUS:"),
            "{e}"
        );
        let key_b64 = cur.expose_secret().split_once(':').unwrap().1.to_owned();
        assert!(!format!("{e} {:?}", ring(&cur, None)).contains(&key_b64));
    }

    proptest::proptest! {
        #[test]
        fn every_secret_round_trips(text in "\\PC{0,200}", org in "[A-Za-z0-9_-]{1,64}") {
            let k = ring(&generate_key_setting("k1"), None);
            let ctx = Context { org_id: &org, ..ACME };
            let sealed = k.seal(&ctx, &secret(&text));
            let opened = k.open(&ctx, &sealed).unwrap();
            proptest::prop_assert_eq!(opened.expose_secret(), text.as_str());
        }
    }
}
