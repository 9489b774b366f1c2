-- Deleted events, logged per statement, organisation and metric (issue 19). Deleting events stays an
-- operator's act (sql/0006_event_ids.sql); usage_period's weighted_sum carries its opening level from
-- the month before (dbt_project/models/marts/usage_period.sql), and that carried level is stale for an
-- organisation and metric with an event before the window deleted at or after the horizon the
-- carried row was computed under. This log is where the model looks that up, through an index on
-- deleted_at, however long the history.
--
-- deleted_at is the deleting transaction's start (now()), like billing.events.ingested_at: the
-- visibility horizon is the earliest start of any transaction open when it is taken, so a deletion a
-- computation might not have seen is logged at or after its horizon. A TRUNCATE of billing.events
-- is logged as one row without organisation and metric: every carried level is stale.
-- Rows that billing.ensure_event_partitions moves out of the DEFAULT partition are not deleted
-- through billing.events and are not logged.
CREATE TABLE billing.event_deletions (
    deletion_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation_id   text,            -- NULL with metric NULL: billing.events was truncated
    metric            text,
    first_occurred_at timestamptz,     -- the earliest and latest occurred_at of the events deleted
    last_occurred_at  timestamptz,
    events            bigint,          -- how many
    deleted_at        timestamptz NOT NULL DEFAULT now(),
    deleted_by        text NOT NULL DEFAULT current_user,
    CHECK ((organisation_id IS NULL) = (metric IS NULL))
);
CREATE INDEX event_deletions_deleted_at ON billing.event_deletions (deleted_at);

CREATE FUNCTION billing.log_event_deletions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        INSERT INTO billing.event_deletions (organisation_id, metric) VALUES (NULL, NULL);
    ELSE
        INSERT INTO billing.event_deletions (organisation_id, metric, first_occurred_at, last_occurred_at, events)
        SELECT organisation_id, metric, min(occurred_at), max(occurred_at), count(*)
        FROM old_events GROUP BY organisation_id, metric;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER events_log_deleted AFTER DELETE ON billing.events
    REFERENCING OLD TABLE AS old_events
    FOR EACH STATEMENT EXECUTE FUNCTION billing.log_event_deletions();
CREATE TRIGGER events_log_truncated AFTER TRUNCATE ON billing.events
    FOR EACH STATEMENT EXECUTE FUNCTION billing.log_event_deletions();
