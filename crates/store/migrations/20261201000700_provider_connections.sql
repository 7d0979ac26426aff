-- Provider connections, OAuth states, per-organisation model catalogs and
-- routing profiles: configuration state of their own (tally replay leaves
-- them alone).

-- One connection per organisation and provider. The credential is stored
-- only sealed (envelope AES-256-GCM, see tally-secrets): the wrapping key's
-- id, the wrapped data key and the ciphertext, each with its nonce.
CREATE TABLE provider_connections (
    org_id              TEXT        NOT NULL,
    provider            TEXT        NOT NULL CHECK (provider IN ('openrouter')),
    connected_via       TEXT        NOT NULL CHECK (connected_via IN ('api_key', 'oauth')),
    key_label           TEXT,
    limit_remaining_usd NUMERIC(38, 20),
    is_free_tier        BOOLEAN,
    byok_providers      TEXT[]      NOT NULL DEFAULT '{}',
    kek_id              TEXT        NOT NULL,
    wrap_nonce          BYTEA       NOT NULL,
    wrapped_key         BYTEA       NOT NULL,
    nonce               BYTEA       NOT NULL,
    ciphertext          BYTEA       NOT NULL,
    connected_at        TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    version             BIGINT      NOT NULL DEFAULT 1,
    models_synced_at    TIMESTAMPTZ,
    models_error        TEXT,
    PRIMARY KEY (org_id, provider)
);

-- OAuth PKCE states: single use, short lived, bound to the organisation
-- and the admin key that started the flow. Only the SHA-256 of the state
-- token is kept; the code verifier is sealed like a credential.
CREATE TABLE provider_oauth_states (
    state_sha256   BYTEA       PRIMARY KEY,
    org_id         TEXT        NOT NULL,
    provider       TEXT        NOT NULL CHECK (provider IN ('openrouter')),
    admin_key_id   TEXT,
    byok_providers TEXT[],
    kek_id         TEXT        NOT NULL,
    wrap_nonce     BYTEA       NOT NULL,
    wrapped_key    BYTEA       NOT NULL,
    nonce          BYTEA       NOT NULL,
    ciphertext     BYTEA       NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at     TIMESTAMPTZ NOT NULL,
    used_at        TIMESTAMPTZ
);
CREATE INDEX provider_oauth_states_expires ON provider_oauth_states (expires_at);

-- The models an organisation's key can use, with exact prices in USD per
-- unit: NULL = not listed, -1 = dynamic (decided per request, no estimate).
CREATE TABLE provider_models (
    org_id                TEXT        NOT NULL,
    provider              TEXT        NOT NULL,
    model_id              TEXT        NOT NULL,
    name                  TEXT,
    context_length        BIGINT,
    max_completion_tokens BIGINT,
    price_prompt             NUMERIC(38, 20) CHECK (price_prompt >= 0 OR price_prompt = -1),
    price_completion         NUMERIC(38, 20) CHECK (price_completion >= 0 OR price_completion = -1),
    price_request            NUMERIC(38, 20) CHECK (price_request >= 0 OR price_request = -1),
    price_input_cache_read   NUMERIC(38, 20) CHECK (price_input_cache_read >= 0 OR price_input_cache_read = -1),
    price_input_cache_write  NUMERIC(38, 20) CHECK (price_input_cache_write >= 0 OR price_input_cache_write = -1),
    price_internal_reasoning NUMERIC(38, 20) CHECK (price_internal_reasoning >= 0 OR price_internal_reasoning = -1),
    price_web_search         NUMERIC(38, 20) CHECK (price_web_search >= 0 OR price_web_search = -1),
    supported_parameters  TEXT[]      NOT NULL DEFAULT '{}',
    input_modalities      TEXT[]      NOT NULL DEFAULT '{}',
    output_modalities     TEXT[]      NOT NULL DEFAULT '{}',
    synced_at             TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (org_id, provider, model_id)
);

-- Routing profiles: the organisation default (agent_id = '') and one per
-- agent. The profile is JSON validated by the worker's routing compiler
-- before it is written.
CREATE TABLE routing_profiles (
    org_id     TEXT        NOT NULL,
    agent_id   TEXT        NOT NULL DEFAULT '',
    profile    JSONB       NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, agent_id)
);
