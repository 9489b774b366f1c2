-- Every event_id of billing.events, once. A partitioned table's keys must include its partition
-- column (occurred_at), so billing.events alone cannot keep event_id unique across its monthly
-- partitions; this table does, in the database itself, for every writer. It is also where the mover
-- looks an incoming event_id up: one index probe, where probing billing.events costs one per
-- partition (a number that grows every month).
--
-- Triggers on billing.events keep it exact, statement by statement (transition tables, one set-based
-- statement each): an insert registers its event_ids (an id already there fails the insert), a
-- delete removes theirs, a truncate empties it. Rows that billing.ensure_event_partitions moves from
-- the DEFAULT partition into a new one keep their ids.
--
-- An event, once in the warehouse, never changes: UPDATE on billing.events is refused (a correction
-- is a new event). Usage relies on it: a usage_period row is kept as it is while no event of its
-- organisation, metric and month was ingested after it was computed. Deleting events stays an
-- operator's act (the days concerned are aggregated again by rerunning their partitions).

CREATE TABLE billing.event_ids (
    event_id    text PRIMARY KEY,
    fingerprint text NOT NULL,           -- as in billing.events: tells a replay from a conflict
    received_at timestamptz NOT NULL
);

INSERT INTO billing.event_ids (event_id, fingerprint, received_at)
SELECT event_id, fingerprint, received_at FROM billing.events;

CREATE FUNCTION billing.sync_event_ids() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        TRUNCATE billing.event_ids;
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        DELETE FROM billing.event_ids i USING old_events o WHERE i.event_id = o.event_id;
    ELSE
        INSERT INTO billing.event_ids (event_id, fingerprint, received_at)
        SELECT event_id, fingerprint, received_at FROM new_events;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER events_register_inserted AFTER INSERT ON billing.events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION billing.sync_event_ids();
CREATE TRIGGER events_register_deleted AFTER DELETE ON billing.events
    REFERENCING OLD TABLE AS old_events
    FOR EACH STATEMENT EXECUTE FUNCTION billing.sync_event_ids();
CREATE TRIGGER events_register_truncated AFTER TRUNCATE ON billing.events
    FOR EACH STATEMENT EXECUTE FUNCTION billing.sync_event_ids();

CREATE TRIGGER events_never_updated BEFORE UPDATE ON billing.events
    FOR EACH STATEMENT EXECUTE FUNCTION billing.reject_change();
