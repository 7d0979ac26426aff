-- tally ledger: budgets, generations, the append-only journal, period
-- totals, alerts and the outbox. Money is NUMERIC(38,20) everywhere: exact,
-- and wide enough for any amount tally_money accepts (8 integer digits, 20
-- fractional) and for sums of billions of them.

CREATE TABLE budgets (
    id                  TEXT PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    org_id              TEXT NOT NULL CHECK (org_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    name                TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    agent_id            TEXT,
    session_id          TEXT,
    user_id             TEXT,
    model               TEXT,
    period              TEXT NOT NULL CHECK (period IN ('total', 'daily', 'weekly', 'monthly')),
    timezone            TEXT NOT NULL,
    limit_usd           NUMERIC(38, 20) NOT NULL CHECK (limit_usd >= 0),
    thresholds_percent  INTEGER[] NOT NULL,
    enforcement         TEXT NOT NULL CHECK (enforcement IN ('hard', 'soft')),
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Generations completed at or after this instant no longer count.
    archived_at         TIMESTAMPTZ
);
CREATE INDEX budgets_org ON budgets (org_id);

-- One row per generation: the folded facts (tally_ledger::Generation) and
-- what is booked. `debited_usd` is what every matching budget carries.
CREATE TABLE generations (
    generation_id       TEXT PRIMARY KEY,
    org_id              TEXT NOT NULL,
    agent_id            TEXT,
    session_id          TEXT,
    user_id             TEXT,
    model               TEXT,
    provider            TEXT,
    status              TEXT,
    is_byok             BOOLEAN NOT NULL DEFAULT FALSE,
    completed_at        TIMESTAMPTZ,             -- NULL until the completed event arrives
    estimated_cost_usd  NUMERIC(38, 20) CHECK (estimated_cost_usd >= 0),
    actual_cost_usd     NUMERIC(38, 20) CHECK (actual_cost_usd >= 0),
    unresolved_reason   TEXT,
    debited_usd         NUMERIC(38, 20),         -- NULL while not booked
    basis               TEXT CHECK (basis IN ('actual', 'estimate', 'none')),
    state               TEXT NOT NULL CHECK (state IN ('pending', 'settled', 'provisional', 'unresolved', 'unpriced')),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((completed_at IS NULL) = (debited_usd IS NULL))
);
CREATE INDEX generations_org_time ON generations (org_id, completed_at);

-- The journal. Append-only: nothing updates or deletes rows (a trigger
-- enforces it). At most one debit and one adjustment per budget and
-- generation: a redelivered or replayed message cannot post twice.
CREATE TABLE ledger_entries (
    -- No foreign key to budgets: the projector takes budget ids from the
    -- budgets it just read under lock, budgets are never deleted, and a
    -- per-row referential check would cost a third of the batch insert.
    budget_id       TEXT NOT NULL,
    entry_id        UUID NOT NULL,
    generation_id   TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('debit', 'adjustment')),
    basis           TEXT NOT NULL CHECK (basis IN ('actual', 'estimate', 'none')),
    amount_usd      NUMERIC(38, 20) NOT NULL CHECK (kind = 'adjustment' OR amount_usd >= 0),
    period_start    TIMESTAMPTZ NOT NULL,
    period_end      TIMESTAMPTZ NOT NULL,
    posted_at       TIMESTAMPTZ NOT NULL,
    batch_id        UUID NOT NULL,
    PRIMARY KEY (budget_id, entry_id),
    UNIQUE (budget_id, generation_id, kind)
);

CREATE FUNCTION ledger_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only (% refused)', TG_OP;
END $$;
CREATE TRIGGER ledger_entries_append_only
    BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only();

-- Period totals, kept equal to the sum of the journal (conservation).
-- spent_usd = spent_actual_usd + spent_estimated_usd (unpriced adds zero).
CREATE TABLE budget_periods (
    budget_id            TEXT NOT NULL,
    period_start         TIMESTAMPTZ NOT NULL,
    period_end           TIMESTAMPTZ NOT NULL,
    spent_usd            NUMERIC(38, 20) NOT NULL DEFAULT 0,
    spent_actual_usd     NUMERIC(38, 20) NOT NULL DEFAULT 0,
    spent_estimated_usd  NUMERIC(38, 20) NOT NULL DEFAULT 0,
    generations          BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (budget_id, period_start),
    CHECK (spent_usd = spent_actual_usd + spent_estimated_usd)
);

-- One alert per budget, period and threshold, ever.
CREATE TABLE alerts (
    alert_id           UUID PRIMARY KEY,
    budget_id          TEXT NOT NULL REFERENCES budgets (id),
    period_start       TIMESTAMPTZ NOT NULL,
    threshold_percent  INTEGER NOT NULL,
    spent_usd          NUMERIC(38, 20) NOT NULL,
    generation_id      TEXT NOT NULL,
    crossed_at         TIMESTAMPTZ NOT NULL,
    UNIQUE (budget_id, period_start, threshold_percent)
);

-- Transactional outbox: derived events written in the same transaction as
-- the entries they describe, published afterwards with msg_id as the
-- JetStream Nats-Msg-Id.
CREATE TABLE outbox (
    id            BIGSERIAL PRIMARY KEY,
    subject       TEXT NOT NULL,
    msg_id        TEXT NOT NULL UNIQUE,
    payload       BYTEA NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at  TIMESTAMPTZ
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

