-- The reconciler's memory, shared by every instance and kept across
-- restarts.
--
-- reconcile_first_lookups: when tally first asked OpenRouter about a
-- generation that was still without its cost close to (or past) its
-- deadline. The give-up rule counts TALLY_RECONCILE_MIN_WINDOW from this
-- instant; the first writer wins (INSERT ... ON CONFLICT DO NOTHING).
CREATE TABLE reconcile_first_lookups (
    generation_id    TEXT PRIMARY KEY,
    org_id           TEXT NOT NULL,
    first_lookup_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX reconcile_first_lookups_age ON reconcile_first_lookups (first_lookup_at);

-- reconcile_sweeps: the sweep's claims and history per generation. A
-- sweeper claims a generation by setting claimed_until in the future (an
-- upsert that only takes expired claims), so instances running at once
-- never look the same generation up twice; swept_at says when it was last
-- asked.
CREATE TABLE reconcile_sweeps (
    generation_id  TEXT PRIMARY KEY,
    claimed_until  TIMESTAMPTZ NOT NULL,
    swept_at       TIMESTAMPTZ,
    sweeps         INTEGER NOT NULL DEFAULT 0,
    last_outcome   TEXT
);

-- The sweep looks for booked generations without an actual cost; most
-- generations have one, so a partial index keeps the scan small.
CREATE INDEX generations_missing_actual ON generations (completed_at)
    WHERE actual_cost_usd IS NULL AND completed_at IS NOT NULL;
