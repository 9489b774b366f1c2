-- Every staged row with its fingerprint, what the warehouse already holds under its event_id, and,
-- when it cannot be accepted, the first reason why (checks in order; one reason per row).
-- Casts appear only in CASE branches reached after the format checks, so a bad row never errors.
CREATE TEMP TABLE edge_checked ON COMMIT DROP AS
WITH formats AS MATERIALIZED (  -- materialized: each check is evaluated once per row
    SELECT s.*,
        billing.edge_fingerprint(s.event_id, s.organisation_id, s.project_id, s.metric, s.quantity,
                                 s.occurred_at, s.properties, s.edge_rowid) AS fingerprint,
        num_nulls(s.event_id, s.organisation_id, s.project_id, s.metric, s.quantity, s.occurred_at,
                  s.received_at) > 0
            OR '' IN (s.event_id, s.organisation_id, s.project_id, s.metric) AS missing,
        s.received_at ~ '^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|\+00(:?00)?)$'
            AND pg_input_is_valid(s.received_at, 'timestamptz') AS received_ok,
        s.quantity ~ '^[+-]?\d{1,26}(\.\d{1,12})?$' AS quantity_ok,
        s.occurred_at ~ '^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}(:?\d{2})?)$'
            AND pg_input_is_valid(s.occurred_at, 'timestamptz') AS occurred_ok,
        -- a JSON object: valid JSON whose first non-blank character is '{'
        s.properties IS NULL OR (s.properties ~ '^\s*\{' AND pg_input_is_valid(s.properties, 'jsonb'))
            AS properties_ok,
        o.organisation_id IS NOT NULL AS org_ok,
        m.code IS NOT NULL AS metric_ok,
        coalesce(m.allow_negative, false) AS allow_negative,
        ex.fingerprint AS existing_fingerprint,
        ex.received_at AS existing_received_at
    FROM edge_stage s
    LEFT JOIN billing.organisations o ON o.organisation_id = s.organisation_id
    LEFT JOIN billing.billable_metrics m ON m.code = s.metric
    LEFT JOIN billing.events ex ON ex.event_id = s.event_id  -- at most one: event_id is unique
),
reasons AS MATERIALIZED (
    SELECT f.*,
        CASE
            WHEN f.missing THEN 'missing_field'
            WHEN NOT f.received_ok THEN 'bad_received_at'
            WHEN NOT f.quantity_ok THEN 'bad_quantity'
            WHEN NOT f.occurred_ok THEN 'bad_occurred_at'
            WHEN NOT f.properties_ok THEN 'malformed_properties'
            WHEN NOT f.org_ok THEN 'unknown_organisation'
            WHEN NOT f.metric_ok THEN 'unknown_metric'
            WHEN NOT f.allow_negative AND f.quantity::numeric < 0 THEN 'negative_quantity'
            WHEN f.occurred_at::timestamptz > f.received_at::timestamptz + interval '1 day'
                THEN 'occurred_in_future'
            WHEN f.existing_fingerprint <> f.fingerprint THEN 'conflicting_duplicate'
        END AS reason
    FROM formats f
)
SELECT r.edge_rowid, r.event_id, r.organisation_id, r.project_id, r.metric, r.quantity, r.occurred_at,
    r.received_at, r.properties, r.fingerprint, r.reason,
    r.existing_fingerprint IS NOT NULL AND r.reason IS NULL AS already_moved,
    CASE WHEN r.received_ok AND NOT r.missing THEN r.received_at::timestamptz END AS received_ts,
    CASE r.reason
        WHEN 'missing_field' THEN 'a required column is empty: ' || concat_ws(', ',
            CASE WHEN coalesce(r.event_id, '') = '' THEN 'event_id' END,
            CASE WHEN coalesce(r.organisation_id, '') = '' THEN 'organisation_id' END,
            CASE WHEN coalesce(r.project_id, '') = '' THEN 'project_id' END,
            CASE WHEN coalesce(r.metric, '') = '' THEN 'metric' END,
            CASE WHEN r.quantity IS NULL THEN 'quantity' END,
            CASE WHEN r.occurred_at IS NULL THEN 'occurred_at' END,
            CASE WHEN r.received_at IS NULL THEN 'received_at' END)
        WHEN 'bad_received_at' THEN 'received_at is not an ISO 8601 UTC timestamp'
        WHEN 'bad_quantity' THEN 'quantity is not a plain decimal (at most 26 integer and 12 fraction digits)'
        WHEN 'bad_occurred_at' THEN 'occurred_at is not an ISO 8601 timestamp with an offset'
        WHEN 'malformed_properties' THEN 'properties is not a JSON object'
        WHEN 'unknown_organisation' THEN 'no organisation with this id in the catalog'
        WHEN 'unknown_metric' THEN 'no billable metric with this code in the catalog'
        WHEN 'negative_quantity' THEN 'negative quantity for a metric that does not allow it'
        WHEN 'occurred_in_future' THEN 'occurred_at is more than a day after received_at'
        WHEN 'conflicting_duplicate' THEN 'event_id already in the warehouse with a different payload (received '
            || to_char(r.existing_received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') || ')'
    END AS detail
FROM reasons r
