-- The checked rows into the warehouse: valid rows into events (every one new: replays left the stage
-- before, unstage_moved.sql), rejected rows into quarantine (a re-run adds nothing).
-- Returns how many rows each insert added.
WITH new_events AS (
    INSERT INTO billing.events
        (event_id, organisation_id, project_id, metric, quantity, occurred_at, received_at, properties,
         fingerprint)
    SELECT c.event_id, c.organisation_id, c.project_id, c.metric, c.quantity_num, c.occurred_ts,
        c.received_ts, c.properties_json, c.fingerprint
    FROM edge_checked c
    WHERE c.reason IS NULL
    RETURNING 1
),
new_quarantine AS (
    INSERT INTO billing.quarantined_events (event_id, reason, detail, raw, fingerprint, received_at)
    SELECT c.event_id, c.reason, c.detail,
        jsonb_build_object('edge_rowid', c.edge_rowid, 'event_id', c.event_id,
                           'organisation_id', c.organisation_id, 'project_id', c.project_id,
                           'metric', c.metric, 'quantity', c.quantity, 'occurred_at', c.occurred_at,
                           'received_at', c.received_at, 'properties', c.properties),
        c.fingerprint, c.received_ts
    FROM edge_checked c
    WHERE c.reason IS NOT NULL
    ON CONFLICT (event_id, fingerprint) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM new_events), (SELECT count(*) FROM new_quarantine)
