-- The staged batch's clean rows into events in one statement: every row that is complete, well
-- formed (sql/0007_edge_text_shapes.sql), known to the catalog and within a day of its arrival, each
-- value cast once. The rules are check_stage.sql's; a row that breaks one is left for the checked
-- path, which names its reason (mover.py). The statement fails, and the mover takes the checked path
-- for the whole batch, when a value of the right shape still does not parse (February 30, too many
-- integer digits, broken JSON) and when an event_id is already in the warehouse: the registry's key
-- refuses it (sql/0006_event_ids.sql). That key is the only look-up: a replay is rare (a run that
-- stopped between its commit and marking the edge), and probing every row for it cost 6-9% of the
-- mover's time (measured).
-- Returns how many rows it inserted and the first and last day among them that get a monthly
-- partition (billing.event_partition_day, sql/0009_event_partitions_beside_inserts.sql).
WITH inserted AS (
    INSERT INTO billing.events
        (event_id, organisation_id, project_id, metric, quantity, occurred_at, received_at, properties,
         fingerprint)
    SELECT t.event_id, t.organisation_id, t.project_id, t.metric, t.quantity, t.occurred_at,
        t.received_at, t.properties, t.fingerprint
    FROM (
        -- a scan filters before it projects, so the casts run on well-formed rows only
        SELECT s.event_id, s.organisation_id, s.project_id, s.metric,
            s.quantity::numeric(38, 12) AS quantity, s.occurred_at::timestamptz AS occurred_at,
            s.received_at::timestamptz AS received_at, s.properties::jsonb AS properties,
            billing.edge_fingerprint(s.event_id, s.organisation_id, s.project_id, s.metric, s.quantity,
                                     s.occurred_at, s.properties, s.edge_rowid) AS fingerprint
        FROM edge_stage s
        WHERE s.event_id <> '' AND s.organisation_id <> '' AND s.project_id <> '' AND s.metric <> ''
            AND billing.is_utc_timestamp_text(s.received_at)
            AND billing.is_plain_decimal_text(s.quantity)
            AND billing.is_offset_timestamp_text(s.occurred_at)
            AND (s.properties IS NULL OR billing.is_json_object_text(s.properties))
        OFFSET 0  -- no condition below is evaluated before these
    ) t
    JOIN billing.organisations o ON o.organisation_id = t.organisation_id
    JOIN billing.billable_metrics m ON m.code = t.metric
    WHERE (m.allow_negative OR t.quantity >= 0)
        AND t.occurred_at <= t.received_at + interval '1 day'
    RETURNING occurred_at, received_at
)
SELECT count(*), min(billing.event_partition_day(occurred_at, received_at)),
    max(billing.event_partition_day(occurred_at, received_at))
FROM inserted
