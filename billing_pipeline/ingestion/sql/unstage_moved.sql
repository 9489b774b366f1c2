-- The staged rows the warehouse already holds as themselves leave the stage: same event_id, same
-- fingerprint (inserted by insert_clean.sql a moment ago, or by an earlier run that stopped before
-- marking the edge). What stays goes through check_stage.sql. Returns one row per row removed.
DELETE FROM edge_stage s
WHERE EXISTS (
    SELECT FROM billing.event_ids i
    WHERE i.event_id = s.event_id
        AND i.fingerprint = billing.edge_fingerprint(s.event_id, s.organisation_id, s.project_id, s.metric,
                                                     s.quantity, s.occurred_at, s.properties, s.edge_rowid)
    OFFSET 0
)
