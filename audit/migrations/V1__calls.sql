-- One row per audit entry: a call the proxy settled, the excess of a late vendor answer, or a
-- refusal. Money is integer micro-dollars; the *_usd views give dollars.
CREATE TABLE calls (
    -- The reservation id; that id with ':late' for the excess of a late answer; a refused
    -- attempt's own id; '<policy tag>/<stream id>' for entries written before entries had ids.
    -- A replayed export of the same entry is a no-op on this key.
    id                 text PRIMARY KEY,
    at                 timestamptz NOT NULL,
    namespace          text NOT NULL,
    vault_key          text NOT NULL,
    key_id             text NOT NULL,
    run_label          text NOT NULL,
    vendor             text NOT NULL,
    method             text NOT NULL,
    endpoint           text NOT NULL,
    estimate_micros    bigint NOT NULL CHECK (estimate_micros >= 0),
    actual_micros      bigint NOT NULL CHECK (actual_micros >= 0),
    overshoot_micros   bigint NOT NULL CHECK (overshoot_micros >= 0),
    outcome            text NOT NULL
        CHECK (outcome IN ('ok', 'vendor_error', 'not_sent', 'unknown', 'refused', 'late')),
    -- The rule that refused the call (refusals only).
    rule               text,
    -- The vendor's HTTP status, when it answered.
    vendor_status      integer,
    vendor_request_id  text,
    -- The reservation the entry belongs to (NULL for refusals: nothing was reserved).
    reservation_id     text,
    -- Where it came from: the policy's stream and the entry's id there.
    policy_tag         text NOT NULL,
    stream_id          text NOT NULL,
    exported_at        timestamptz NOT NULL DEFAULT now()
);

-- The questions of an incident review: a run, a key, a time range, a vendor request id, the
-- refusals, the unknown outcomes.
CREATE INDEX calls_run ON calls (namespace, run_label, at);
CREATE INDEX calls_key ON calls (key_id, at);
CREATE INDEX calls_vault_key ON calls (namespace, vault_key, at);
CREATE INDEX calls_at ON calls (at);
CREATE INDEX calls_vendor_request ON calls (vendor_request_id) WHERE vendor_request_id IS NOT NULL;
CREATE INDEX calls_refused ON calls (namespace, at) WHERE outcome = 'refused';
CREATE INDEX calls_unknown ON calls (namespace, at) WHERE outcome = 'unknown';

-- Every call with its money in dollars.
CREATE VIEW calls_usd AS
SELECT c.*,
       c.estimate_micros::numeric / 1000000 AS estimate_usd,
       c.actual_micros::numeric / 1000000 AS actual_usd,
       c.overshoot_micros::numeric / 1000000 AS overshoot_usd
FROM calls c;

-- Per run: calls made (a late excess is not a call), refusals, money moved, first and last call.
CREATE VIEW run_totals AS
SELECT namespace,
       run_label,
       count(*) FILTER (WHERE outcome IN ('ok', 'vendor_error', 'unknown')) AS calls,
       count(*) FILTER (WHERE outcome = 'refused') AS refused,
       count(*) FILTER (WHERE outcome = 'unknown') AS unknown,
       sum(actual_micros) AS actual_micros,
       sum(actual_micros)::numeric / 1000000 AS actual_usd,
       min(at) AS first_at,
       max(at) AS last_at
FROM calls
GROUP BY namespace, run_label;

-- Per VaultKey and UTC day: money moved and calls, as the caps count them.
CREATE VIEW key_daily_spend AS
SELECT namespace,
       vault_key,
       key_id,
       (at AT TIME ZONE 'UTC')::date AS day,
       count(*) FILTER (WHERE outcome IN ('ok', 'vendor_error', 'unknown')) AS calls,
       count(*) FILTER (WHERE outcome = 'refused') AS refused,
       sum(actual_micros) AS actual_micros,
       sum(actual_micros)::numeric / 1000000 AS actual_usd
FROM calls
GROUP BY namespace, vault_key, key_id, (at AT TIME ZONE 'UTC')::date;

-- Entries that could not become a row of `calls` (they do not read back, PostgreSQL refused
-- them, or their id is taken by another entry). Kept here, acknowledged in Redis, so one bad
-- entry neither blocks its stream nor is lost; counted in
-- keybrake_proxy_audit_rejected_entries.
CREATE TABLE calls_rejected (
    policy_tag   text NOT NULL,
    stream_id    text NOT NULL,
    problem      text NOT NULL,
    fields       jsonb NOT NULL,
    rejected_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (policy_tag, stream_id)
);
