-- Every staged row with its fingerprint, what the warehouse already holds under its event_id, its
-- typed values, and, when it cannot be accepted, the first reason why (checks in order, one reason).
-- Rows already in the warehouse as themselves have left the stage before (unstage_moved.sql), so an
-- event_id found here is a conflict.
-- A cast runs only in a CASE branch guarded by its format check, so a bad row never errors.
CREATE TEMP TABLE edge_checked ON COMMIT DROP AS
WITH checked AS MATERIALIZED (  -- materialized: each check and cast is evaluated once per row
    SELECT s.*, v.*,
        CASE WHEN v.received_ok THEN s.received_at::timestamptz END AS received_ts,
        CASE WHEN v.occurred_ok THEN s.occurred_at::timestamptz END AS occurred_ts,
        CASE WHEN v.quantity_ok THEN s.quantity::numeric END AS quantity_num,
        o.organisation_id IS NOT NULL AS org_ok,
        m.code IS NOT NULL AS metric_ok,
        coalesce(m.allow_negative, false) AS allow_negative,
        ex.fingerprint AS existing_fingerprint,
        ex.received_at AS existing_received_at
    FROM edge_stage s
    CROSS JOIN LATERAL (
        SELECT
            billing.edge_fingerprint(s.event_id, s.organisation_id, s.project_id, s.metric, s.quantity,
                                     s.occurred_at, s.properties, s.edge_rowid) AS fingerprint,
            num_nulls(s.event_id, s.organisation_id, s.project_id, s.metric, s.quantity, s.occurred_at,
                      s.received_at) > 0
                OR '' IN (s.event_id, s.organisation_id, s.project_id, s.metric) AS missing,
            -- the shape first (sql/0007_edge_text_shapes.sql), then PostgreSQL's own parser
            billing.is_utc_timestamp_text(s.received_at)
                AND billing.input_is_valid(s.received_at, 'timestamptz') AS received_ok,
            billing.is_plain_decimal_text(s.quantity)
                AND billing.input_is_valid(s.quantity, 'numeric(38,12)') AS quantity_ok,
            billing.is_offset_timestamp_text(s.occurred_at)
                AND billing.input_is_valid(s.occurred_at, 'timestamptz') AS occurred_ok,
            s.properties IS NULL OR (billing.is_json_object_text(s.properties)
                                     AND billing.input_is_valid(s.properties, 'jsonb')) AS properties_ok
    ) v
    LEFT JOIN billing.organisations o ON o.organisation_id = s.organisation_id
    LEFT JOIN billing.billable_metrics m ON m.code = s.metric
    -- One index probe per staged row into the registry of every event_id in the warehouse
    -- (sql/0006_event_ids.sql), never a join that reads it whole (OFFSET 0 keeps it a probe).
    LEFT JOIN LATERAL (
        SELECT i.fingerprint, i.received_at FROM billing.event_ids i WHERE i.event_id = s.event_id OFFSET 0
    ) ex ON true
)
SELECT c.edge_rowid, c.event_id, c.organisation_id, c.project_id, c.metric, c.quantity, c.occurred_at,
    c.received_at, c.properties, c.fingerprint, r.reason,
    c.received_ts,  -- kept for every row whose received_at parses, whatever its reason (event reconciliation buckets by it)
    CASE WHEN r.reason IS NULL THEN c.quantity_num END AS quantity_num,
    CASE WHEN r.reason IS NULL THEN c.occurred_ts END AS occurred_ts,
    CASE WHEN r.reason IS NULL THEN c.properties::jsonb END AS properties_json,
    CASE r.reason
        WHEN 'missing_field' THEN 'a required column is empty: ' || concat_ws(', ',
            CASE WHEN coalesce(c.event_id, '') = '' THEN 'event_id' END,
            CASE WHEN coalesce(c.organisation_id, '') = '' THEN 'organisation_id' END,
            CASE WHEN coalesce(c.project_id, '') = '' THEN 'project_id' END,
            CASE WHEN coalesce(c.metric, '') = '' THEN 'metric' END,
            CASE WHEN c.quantity IS NULL THEN 'quantity' END,
            CASE WHEN c.occurred_at IS NULL THEN 'occurred_at' END,
            CASE WHEN c.received_at IS NULL THEN 'received_at' END)
        WHEN 'bad_received_at' THEN 'received_at is not an ISO 8601 UTC timestamp'
        WHEN 'bad_quantity' THEN 'quantity is not a plain decimal (at most 26 integer and 12 fraction digits)'
        WHEN 'bad_occurred_at' THEN 'occurred_at is not an ISO 8601 timestamp with an offset'
        WHEN 'malformed_properties' THEN 'properties is not a JSON object'
        WHEN 'unknown_organisation' THEN 'no organisation with this id in the catalog'
        WHEN 'unknown_metric' THEN 'no billable metric with this code in the catalog'
        WHEN 'negative_quantity' THEN 'negative quantity for a metric that does not allow it'
        WHEN 'occurred_in_future' THEN 'occurred_at is more than a day after received_at'
        WHEN 'conflicting_duplicate' THEN 'event_id already in the warehouse with a different payload (received '
            || to_char(c.existing_received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') || ')'
    END AS detail
FROM checked c
CROSS JOIN LATERAL (
    SELECT CASE
        WHEN c.missing THEN 'missing_field'
        WHEN NOT c.received_ok THEN 'bad_received_at'
        WHEN NOT c.quantity_ok THEN 'bad_quantity'
        WHEN NOT c.occurred_ok THEN 'bad_occurred_at'
        WHEN NOT c.properties_ok THEN 'malformed_properties'
        WHEN NOT c.org_ok THEN 'unknown_organisation'
        WHEN NOT c.metric_ok THEN 'unknown_metric'
        WHEN NOT c.allow_negative AND c.quantity_num < 0 THEN 'negative_quantity'
        WHEN c.occurred_ts > c.received_ts + interval '1 day' THEN 'occurred_in_future'
        WHEN c.existing_fingerprint <> c.fingerprint THEN 'conflicting_duplicate'
    END AS reason
) r
