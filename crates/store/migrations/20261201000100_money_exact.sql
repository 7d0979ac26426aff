-- Money columns become unconstrained NUMERIC.
--
-- NUMERIC(38, 20) could not hold what OpenRouter sends: a cost printed as a
-- JavaScript double (17 significant digits, e.g. 9.999999999999999e-13)
-- needs up to 28 digits after the point, and a constrained NUMERIC(p, s)
-- *rounds* anything finer than s silently. Unconstrained NUMERIC never
-- rounds on the way in; tally_money's Usd (28 fractional digits, at most
-- 10^10 USD) reads every value back exactly or refuses it, never rounded.
-- The CHECKs keep every stored amount within what Usd holds, so a value no
-- reader can hold fails at the write that made it, naming the column.

ALTER TABLE budgets
    ALTER COLUMN limit_usd TYPE NUMERIC,
    ADD CONSTRAINT budgets_limit_usd_exact
        CHECK (min_scale(limit_usd) <= 28 AND abs(limit_usd) <= 10000000000);

ALTER TABLE generations
    ALTER COLUMN estimated_cost_usd TYPE NUMERIC,
    ALTER COLUMN actual_cost_usd TYPE NUMERIC,
    ALTER COLUMN debited_usd TYPE NUMERIC,
    ADD CONSTRAINT generations_money_exact CHECK (
        min_scale(estimated_cost_usd) <= 28 AND abs(estimated_cost_usd) <= 10000000000
        AND min_scale(actual_cost_usd) <= 28 AND abs(actual_cost_usd) <= 10000000000
        AND min_scale(debited_usd) <= 28 AND abs(debited_usd) <= 10000000000);

ALTER TABLE ledger_entries
    ALTER COLUMN amount_usd TYPE NUMERIC,
    ADD CONSTRAINT ledger_entries_amount_usd_exact
        CHECK (min_scale(amount_usd) <= 28 AND abs(amount_usd) <= 10000000000);

ALTER TABLE budget_periods
    ALTER COLUMN spent_usd TYPE NUMERIC,
    ALTER COLUMN spent_actual_usd TYPE NUMERIC,
    ALTER COLUMN spent_estimated_usd TYPE NUMERIC,
    ADD CONSTRAINT budget_periods_money_exact CHECK (
        min_scale(spent_usd) <= 28 AND abs(spent_usd) <= 10000000000
        AND min_scale(spent_actual_usd) <= 28 AND abs(spent_actual_usd) <= 10000000000
        AND min_scale(spent_estimated_usd) <= 28 AND abs(spent_estimated_usd) <= 10000000000);

ALTER TABLE alerts
    ALTER COLUMN spent_usd TYPE NUMERIC,
    ADD CONSTRAINT alerts_spent_usd_exact
        CHECK (min_scale(spent_usd) <= 28 AND abs(spent_usd) <= 10000000000);
