//! Organisations and their API keys.
//!
//! Organisations and keys are configuration, not projections: `tally
//! replay` rebuilds the ledger and leaves these tables alone.
//!
//! An API key is `tly_` followed by [`KEY_RANDOM_CHARS`] random base62
//! characters (about 238 bits from the operating system's CSPRNG via
//! `rand`'s thread generator). It is shown once, when it is issued
//! ([`IssuedKey::secret`]); the store keeps only its SHA-256 digest, its
//! display prefix (the first [`DISPLAY_PREFIX_CHARS`] characters), role,
//! name, creation, last use and revocation times.
//!
//! # Invariants
//!
//! * No secret is ever stored, logged or returned after issue: the secret
//!   lives in a [`SecretString`] whose `Debug` prints nothing of it.
//! * A key belongs to exactly one organisation for life; revocation is a
//!   timestamp (`revoked_at`), never a delete, so history stays auditable.
//! * An organisation holds at most [`MAX_KEYS_PER_ORG`] unrevoked keys (the
//!   count is taken under a lock on the organisation's row).
//!
//! # Decisions
//!
//! * **SHA-256, not a slow password hash.** A key has ~238 bits of entropy;
//!   nobody can guess it from its digest, so a fast hash keeps every
//!   request cheap. Lookups go by the display prefix (not secret: it is
//!   shown in listings) and the digests of the candidates are compared in
//!   constant time ([`KeyCandidate::matches`]).
//! * **`last_used_at` is coarse.** [`Store::touch_key`] writes it at most
//!   once a minute per key, so authentication does not turn every read
//!   into a write.

use chrono::{DateTime, Utc};
use rand::distr::{Alphanumeric, Distribution};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgRow;
use sqlx::Row;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::found::FetchFound;
use crate::{Store, StoreError};

/// Every API key starts with this.
pub const KEY_PREFIX: &str = "tly_";
/// Random base62 characters after [`KEY_PREFIX`] in keys tally issues.
pub const KEY_RANDOM_CHARS: usize = 40;
/// Fewest random characters a well-formed key has.
pub const MIN_KEY_RANDOM_CHARS: usize = 32;
/// Most random characters a well-formed key has.
pub const MAX_KEY_RANDOM_CHARS: usize = 128;
/// Length of the display prefix (`tly_` and 8 characters).
pub const DISPLAY_PREFIX_CHARS: usize = 12;
/// Most unrevoked keys per organisation.
pub const MAX_KEYS_PER_ORG: i64 = 100;
/// Longest organisation or key name, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads the organisation's budgets, spend and generations; checks.
    Member,
    /// Everything a member may, plus managing budgets and keys.
    Admin,
}

impl Role {
    /// The wire name (`member`, `admin`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }

    /// Parses a wire name exactly.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An organisation.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Org {
    /// Its id (`^[A-Za-z0-9_-]{1,64}$`).
    pub org_id: String,
    /// A name for people, if given.
    pub name: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// What is known about a key (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// Key id.
    pub id: Uuid,
    /// Organisation.
    pub org_id: String,
    /// Role.
    pub role: Role,
    /// A name for people, if given.
    pub name: Option<String>,
    /// The first [`DISPLAY_PREFIX_CHARS`] characters of the secret.
    pub prefix: String,
    /// When it was issued.
    pub created_at: DateTime<Utc>,
    /// Last successful authentication (at most a minute stale).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key just issued: the only moment its secret exists outside the caller.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    /// What is stored.
    pub info: KeyInfo,
    /// The secret (`tly_…`), to show once.
    pub secret: SecretString,
}

/// An unrevoked key whose display prefix matches a presented secret.
#[derive(Debug, Clone)]
pub struct KeyCandidate {
    /// Key id.
    pub id: Uuid,
    /// Organisation.
    pub org_id: String,
    /// Role.
    pub role: Role,
    /// Last use as stored.
    pub last_used_at: Option<DateTime<Utc>>,
    digest: [u8; 32],
}

impl KeyCandidate {
    /// Whether `digest` is this key's digest (constant time).
    pub fn matches(&self, digest: &[u8; 32]) -> bool {
        self.digest.ct_eq(digest).into()
    }
}

/// Why a presented string cannot be a tally API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFormatError {
    /// It does not start with `tly_`.
    NoPrefix,
    /// Too short or too long, or a character outside base62.
    BadBody,
}

/// A well-formed presented key: its display prefix and digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresentedKey<'a> {
    /// The display prefix (lookup index).
    pub prefix: &'a str,
    /// SHA-256 of the whole secret.
    pub digest: [u8; 32],
}

/// Checks the form of a presented key (`tly_` and 32 to 128 base62
/// characters) and computes its prefix and digest.
pub fn parse_key(secret: &str) -> Result<PresentedKey<'_>, KeyFormatError> {
    let body = secret
        .strip_prefix(KEY_PREFIX)
        .ok_or(KeyFormatError::NoPrefix)?;
    if !(MIN_KEY_RANDOM_CHARS..=MAX_KEY_RANDOM_CHARS).contains(&body.len())
        || !body.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(KeyFormatError::BadBody);
    }
    Ok(PresentedKey {
        prefix: &secret[..DISPLAY_PREFIX_CHARS],
        digest: digest(secret),
    })
}

/// SHA-256 of a secret.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A fresh random key secret.
fn new_secret() -> SecretString {
    let mut rng = rand::rng();
    let mut s = String::with_capacity(KEY_PREFIX.len() + KEY_RANDOM_CHARS);
    s.push_str(KEY_PREFIX);
    s.extend(
        Alphanumeric
            .sample_iter(&mut rng)
            .take(KEY_RANDOM_CHARS)
            .map(char::from),
    );
    SecretString::from(s)
}

fn check_name(field: &'static str, name: Option<&str>) -> Result<(), StoreError> {
    if let Some(n) = name {
        if n.trim().is_empty()
            || n.chars().count() > MAX_NAME_CHARS
            || n.chars().any(char::is_control)
        {
            return Err(StoreError::Invalid {
                field,
                reason: format!(
                    "{field} must be 1 to {MAX_NAME_CHARS} characters, not blank, without control characters"
                ),
            });
        }
    }
    Ok(())
}

fn check_org_id(org_id: &str) -> Result<(), StoreError> {
    if !tally_events::is_valid_id(org_id) {
        return Err(StoreError::Invalid {
            field: "org_id",
            reason: format!("{org_id:?} must match ^[A-Za-z0-9_-]{{1,64}}$"),
        });
    }
    Ok(())
}

const KEY_COLUMNS: &str = "id, org_id, role, name, prefix, created_at, last_used_at, revoked_at";

fn key_info(row: &PgRow) -> Result<KeyInfo, StoreError> {
    let role: String = row.try_get("role")?;
    Ok(KeyInfo {
        id: row.try_get("id")?,
        org_id: row.try_get("org_id")?,
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("api key with role {role:?}")))?,
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

impl Store {
    /// Creates an organisation and its first admin key. An existing
    /// `org_id` is a [`StoreError::Conflict`].
    pub async fn create_org(
        &self,
        org_id: &str,
        name: Option<&str>,
    ) -> Result<(Org, IssuedKey), StoreError> {
        check_org_id(org_id)?;
        check_name("name", name)?;
        let mut tx = self.pool().begin().await?;
        let org: Org = sqlx::query_as(
            "INSERT INTO orgs (org_id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING \
             RETURNING org_id, name, created_at",
        )
        .bind(org_id)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::Conflict(format!("organisation {org_id:?} exists")))?;
        let key = insert_key(&mut tx, org_id, Role::Admin, Some("first admin key")).await?;
        tx.commit().await?;
        Ok((org, key))
    }

    /// The organisation, if it exists.
    pub async fn org(&self, org_id: &str) -> Result<Option<Org>, StoreError> {
        Ok(
            sqlx::query_as("SELECT org_id, name, created_at FROM orgs WHERE org_id = $1")
                .bind(org_id)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// Issues a key, at most [`MAX_KEYS_PER_ORG`] unrevoked per
    /// organisation (see [`Store::create_key_within`]).
    pub async fn create_key(
        &self,
        org_id: &str,
        role: Role,
        name: Option<&str>,
    ) -> Result<IssuedKey, StoreError> {
        self.create_key_within(org_id, role, name, MAX_KEYS_PER_ORG as u32)
            .await
    }

    /// Issues a key. Unknown organisation → [`StoreError::NotFound`]
    /// (`org`); `max_keys` unrevoked keys already →
    /// [`StoreError::LimitExceeded`] (`keys_per_org`). The organisation's
    /// row is locked, so concurrent issues never pass the limit.
    pub async fn create_key_within(
        &self,
        org_id: &str,
        role: Role,
        name: Option<&str>,
        max_keys: u32,
    ) -> Result<IssuedKey, StoreError> {
        check_org_id(org_id)?;
        check_name("name", name)?;
        let mut tx = self.pool().begin().await?;
        lock_org_below_limit(
            &mut tx,
            org_id,
            "SELECT count(*) FROM api_keys WHERE org_id = $1 AND revoked_at IS NULL",
            "keys_per_org",
            max_keys,
        )
        .await?;
        let key = insert_key(&mut tx, org_id, role, name).await?;
        tx.commit().await?;
        Ok(key)
    }

    /// The unrevoked keys of an organisation, oldest first.
    pub async fn list_keys(&self, org_id: &str) -> Result<Vec<KeyInfo>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE org_id = $1 AND revoked_at IS NULL \
             ORDER BY created_at, id"
        ))
        .bind(org_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(key_info).collect()
    }

    /// Revokes a key at once (idempotent: a revoked key keeps its first
    /// revocation time). With `org_id`, only a key of that organisation;
    /// otherwise [`StoreError::NotFound`] (`key`).
    pub async fn revoke_key(&self, id: Uuid, org_id: Option<&str>) -> Result<KeyInfo, StoreError> {
        let row = sqlx::query(&format!(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) \
             WHERE id = $1 AND ($2::text IS NULL OR org_id = $2) RETURNING {KEY_COLUMNS}"
        ))
        .bind(id)
        .bind(org_id)
        .fetch_found(self.pool(), "key")
        .await?;
        key_info(&row)
    }

    /// The unrevoked keys with this display prefix (normally one); the
    /// caller compares digests with [`KeyCandidate::matches`].
    pub async fn key_candidates(&self, prefix: &str) -> Result<Vec<KeyCandidate>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, org_id, role, digest, last_used_at FROM api_keys \
             WHERE prefix = $1 AND revoked_at IS NULL",
        )
        .bind(prefix)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let role: String = row.try_get("role")?;
                let digest: Vec<u8> = row.try_get("digest")?;
                Ok(KeyCandidate {
                    id: row.try_get("id")?,
                    org_id: row.try_get("org_id")?,
                    role: Role::parse(&role).ok_or_else(|| {
                        StoreError::Corrupt(format!("api key with role {role:?}"))
                    })?,
                    last_used_at: row.try_get("last_used_at")?,
                    digest: digest.try_into().map_err(|_| {
                        StoreError::Corrupt("api key digest is not 32 bytes".into())
                    })?,
                })
            })
            .collect()
    }

    /// Records a use of the key, at most once a minute (a no-op otherwise).
    pub async fn touch_key(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE api_keys SET last_used_at = now() WHERE id = $1 \
             AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
        )
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

/// Locks the organisation's row until `tx` ends and checks that it has
/// fewer than `max` of what `count_sql` counts (its `$1` is the
/// organisation): an unknown organisation is [`StoreError::NotFound`]
/// (`org`), `max` already is [`StoreError::LimitExceeded`] (`limit`). Under
/// the lock, concurrent creations cannot pass the limit.
pub(crate) async fn lock_org_below_limit(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    org_id: &str,
    count_sql: &str,
    limit: &'static str,
    max: u32,
) -> Result<(), StoreError> {
    let exists = sqlx::query("SELECT 1 FROM orgs WHERE org_id = $1 FOR UPDATE")
        .bind(org_id)
        .fetch_optional(&mut **tx)
        .await?;
    if exists.is_none() {
        return Err(StoreError::NotFound { what: "org" });
    }
    let live: i64 = sqlx::query_scalar(count_sql)
        .bind(org_id)
        .fetch_one(&mut **tx)
        .await?;
    if live >= i64::from(max) {
        return Err(StoreError::LimitExceeded { limit, max });
    }
    Ok(())
}

async fn insert_key(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    org_id: &str,
    role: Role,
    name: Option<&str>,
) -> Result<IssuedKey, StoreError> {
    let secret = new_secret();
    let text = secret.expose_secret();
    let row = sqlx::query(&format!(
        "INSERT INTO api_keys (id, org_id, role, name, prefix, digest) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {KEY_COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(org_id)
    .bind(role.as_str())
    .bind(name)
    .bind(&text[..DISPLAY_PREFIX_CHARS])
    .bind(&digest(text)[..])
    .fetch_one(&mut **tx)
    .await?;
    Ok(IssuedKey {
        info: key_info(&row)?,
        secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_secrets_are_well_formed_and_distinct() {
        let a = new_secret();
        let b = new_secret();
        let (a, b) = (a.expose_secret(), b.expose_secret());
        assert_ne!(a, b);
        assert_eq!(a.len(), KEY_PREFIX.len() + KEY_RANDOM_CHARS);
        let p = parse_key(a).unwrap();
        assert_eq!(p.prefix, &a[..12]);
        assert_eq!(p.digest, digest(a));
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert_eq!(parse_key("sk-123"), Err(KeyFormatError::NoPrefix));
        assert_eq!(parse_key("tly_short"), Err(KeyFormatError::BadBody));
        let bad = format!("tly_{}!", "a".repeat(40));
        assert_eq!(parse_key(&bad), Err(KeyFormatError::BadBody));
        let long = format!("tly_{}", "a".repeat(129));
        assert_eq!(parse_key(&long), Err(KeyFormatError::BadBody));
        assert!(parse_key(&format!("tly_{}", "a".repeat(32))).is_ok());
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let s = new_secret();
        let text = format!("{s:?}");
        assert!(!text.contains(&s.expose_secret()[4..]), "{text}");
    }
}
