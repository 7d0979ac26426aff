-- Webhooks: HTTP receivers of an organisation's events, and the durable
-- queue and log of their deliveries. Configuration and delivery state of
-- their own: `tally replay` rebuilds the ledger's tables and leaves these
-- alone.

-- A receiver registered by an organisation's admin. The signing secret is
-- stored only sealed (envelope AES-256-GCM under TALLY_SECRETS_KEY, like
-- provider credentials, bound to the organisation, `webhook` and the
-- webhook's id). Deleting a webhook keeps the row (deleted_at) for the
-- delivery log's sake and destroys the ciphertext.
CREATE TABLE webhooks (
    id           UUID        PRIMARY KEY,
    org_id       TEXT        NOT NULL REFERENCES orgs (org_id),
    url          TEXT        NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    events       TEXT[]      NOT NULL CHECK (
        cardinality(events) >= 1
        AND events <@ ARRAY['budget.threshold_crossed', 'ledger.posted']::TEXT[]
    ),
    description  TEXT        CHECK (length(description) BETWEEN 1 AND 500),
    kek_id       TEXT,
    wrap_nonce   BYTEA,
    wrapped_key  BYTEA,
    nonce        BYTEA,
    ciphertext   BYTEA,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at   TIMESTAMPTZ,
    -- A live webhook always has its sealed secret; a deleted one never.
    CHECK ((deleted_at IS NULL) = (ciphertext IS NOT NULL AND kek_id IS NOT NULL
        AND wrap_nonce IS NOT NULL AND wrapped_key IS NOT NULL AND nonce IS NOT NULL))
);
CREATE INDEX webhooks_org ON webhooks (org_id, id) WHERE deleted_at IS NULL;

-- One row per (event, webhook): the delivery queue and its log. `id` is the
-- Standard Webhooks `webhook-id`, the same on every attempt. `payload` is the
-- event's CloudEvent JSON exactly as it was on the bus (the signed body).
-- `accepted_at` (when the event was taken from the bus) starts the retry
-- horizon. A pending row is due at `next_attempt_at`; a claim moves that
-- forward by a lease, so an instance that dies mid-attempt leaves the row
-- due again once the lease ends.
CREATE TABLE webhook_deliveries (
    id               UUID        PRIMARY KEY,
    webhook_id       UUID        NOT NULL REFERENCES webhooks (id),
    org_id           TEXT        NOT NULL,
    event_id         TEXT        NOT NULL CHECK (length(event_id) BETWEEN 1 AND 512),
    event_type       TEXT        NOT NULL,
    payload          TEXT        NOT NULL,
    state            TEXT        NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts         INTEGER     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    accepted_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_attempt_at  TIMESTAMPTZ,
    last_status      INTEGER,
    last_error       TEXT        CHECK (length(last_error) <= 1024),
    last_response    TEXT        CHECK (length(last_response) <= 1024),
    delivered_at     TIMESTAMPTZ,
    failed_at        TIMESTAMPTZ,
    UNIQUE (event_id, webhook_id),
    CHECK ((state = 'delivered') = (delivered_at IS NOT NULL)),
    CHECK ((state = 'failed') = (failed_at IS NOT NULL))
);
-- The delivery loop's claim: due pending rows, oldest first.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';
-- A webhook's delivery log, newest first.
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (webhook_id, accepted_at DESC, id DESC);
