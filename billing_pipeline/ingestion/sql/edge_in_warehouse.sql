-- For each staged edge row: is it in the warehouse, as itself? In events under its event_id with
-- the same fingerprint (one probe into billing.event_ids, which the database keeps equal to the ids
-- in events), or in quarantine under the same (event_id, fingerprint).
CREATE TEMP TABLE edge_presence ON COMMIT DROP AS
SELECT s.*, p.fingerprint,
    EXISTS (SELECT 1 FROM billing.event_ids i WHERE i.event_id = s.event_id AND i.fingerprint = p.fingerprint)
    OR EXISTS (SELECT 1 FROM billing.quarantined_events q
               WHERE q.event_id IS NOT DISTINCT FROM s.event_id AND q.fingerprint = p.fingerprint)
        AS in_warehouse
FROM edge_stage s
CROSS JOIN LATERAL (
    SELECT billing.edge_fingerprint(s.event_id, s.organisation_id, s.project_id, s.metric, s.quantity,
                                    s.occurred_at, s.properties, s.edge_rowid) AS fingerprint
) p
