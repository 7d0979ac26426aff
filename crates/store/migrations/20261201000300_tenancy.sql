-- Tenancy: organisations and their API keys. Configuration, not a
-- projection: `tally replay` rebuilds the ledger's tables and leaves these
-- alone.

CREATE TABLE orgs (
    org_id      TEXT PRIMARY KEY CHECK (org_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    name        TEXT CHECK (length(name) BETWEEN 1 AND 200),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- An API key is stored only as the SHA-256 digest of its secret; `prefix`
-- (the first 12 characters of the secret) is shown to people and is the
-- lookup index, the digest is compared in constant time by the caller.
CREATE TABLE api_keys (
    id            UUID PRIMARY KEY,
    org_id        TEXT NOT NULL REFERENCES orgs (org_id),
    role          TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    name          TEXT CHECK (length(name) BETWEEN 1 AND 200),
    prefix        TEXT NOT NULL CHECK (length(prefix) = 12),
    digest        BYTEA NOT NULL UNIQUE CHECK (length(digest) = 32),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at  TIMESTAMPTZ,
    revoked_at    TIMESTAMPTZ
);
CREATE INDEX api_keys_prefix ON api_keys (prefix) WHERE revoked_at IS NULL;
CREATE INDEX api_keys_org ON api_keys (org_id, created_at);

-- Organisations that already have budgets or generations exist from now on,
-- so their operator can give them keys (`tally key create --org`).
INSERT INTO orgs (org_id)
SELECT org_id FROM (SELECT org_id FROM budgets UNION SELECT org_id FROM generations) o
WHERE org_id ~ '^[A-Za-z0-9_-]{1,64}$'
ON CONFLICT DO NOTHING;
