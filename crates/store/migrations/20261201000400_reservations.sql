-- Reservations: a hold on the worst-case cost of a generation request,
-- taken against every matching budget before OpenRouter is called, and
-- settled by the projector when the completed event carrying the request id
-- is booked (or released when it expires or the request fails).
--
-- Reservations are state of their own, not a projection: `tally replay`
-- leaves them alone and recomputes `budget_periods.held_usd` from them.

ALTER TABLE budgets
    ADD COLUMN allow_unpriced_models BOOLEAN NOT NULL DEFAULT FALSE;

-- What is held in the period now: the sum of the hold rows of its
-- reservations in state 'held' (kept equal by the same transactions that
-- take, settle and release holds). No CHECK (held_usd >= 0): the
-- projector's one upsert of the period rows carries releases as negative
-- proposed values, which a CHECK would refuse before the conflict is
-- resolved; the store verifies the result (RETURNING) instead.
ALTER TABLE budget_periods
    ADD COLUMN held_usd NUMERIC(38, 20) NOT NULL DEFAULT 0;

-- One row per generation request (`request_id`), whatever became of it.
--   held     → the hold counts against its budgets;
--   settled  → the completed event was booked (the hold is gone, the spend is in);
--   released → the hold expired or the request failed without a generation;
--   refused  → a hard budget refused it (no hold was taken).
CREATE TABLE reservations (
    request_id       TEXT PRIMARY KEY CHECK (length(request_id) BETWEEN 1 AND 256),
    org_id           TEXT NOT NULL CHECK (org_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    agent_id         TEXT,
    session_id       TEXT,
    user_id          TEXT,
    model            TEXT NOT NULL,
    -- The worst case held per matching budget; NULL when the model's price
    -- is dynamic or unknown (only budgets that allow unpriced models let it
    -- through, holding zero).
    amount_usd       NUMERIC(38, 20) CHECK (amount_usd >= 0),
    max_output_tokens BIGINT NOT NULL CHECK (max_output_tokens >= 0),
    state            TEXT NOT NULL CHECK (state IN ('held', 'settled', 'released', 'refused')),
    -- OpenRouter's generation id, recorded as soon as the response headers
    -- arrive: a request with one is never sent to OpenRouter again.
    generation_id    TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at       TIMESTAMPTZ NOT NULL,
    settled_at       TIMESTAMPTZ,
    -- What the generation was debited when its hold was settled.
    settled_usd      NUMERIC(38, 20),
    released_at      TIMESTAMPTZ,
    -- 'expired' or 'request_failed' for released; NULL otherwise.
    release_reason   TEXT CHECK (release_reason IN ('expired', 'request_failed')),
    -- Why the request failed or was refused (the failed event's reason).
    failure_reason   TEXT,
    failure_message  TEXT,
    -- The budget that refused it.
    refused_by       TEXT,
    CHECK ((state = 'settled') = (settled_at IS NOT NULL)),
    CHECK ((state = 'released') = (released_at IS NOT NULL)),
    CHECK (state <> 'refused' OR failure_reason IS NOT NULL)
);
-- The sweeper's scan: held reservations by expiry.
CREATE INDEX reservations_expiry ON reservations (expires_at) WHERE state = 'held';
-- Listing an organisation's reservations by state, newest first.
CREATE INDEX reservations_org_state ON reservations (org_id, state, created_at DESC, request_id);

-- One row per reservation and budget it holds against.
CREATE TABLE reservation_holds (
    request_id    TEXT NOT NULL REFERENCES reservations (request_id),
    budget_id     TEXT NOT NULL,
    period_start  TIMESTAMPTZ NOT NULL,
    period_end    TIMESTAMPTZ NOT NULL,
    amount_usd    NUMERIC(38, 20) NOT NULL CHECK (amount_usd >= 0),
    PRIMARY KEY (request_id, budget_id)
);
CREATE INDEX reservation_holds_budget ON reservation_holds (budget_id, period_start);
