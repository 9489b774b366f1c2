-- Usage events moved from the edge store, and the rows that could not be accepted.
-- events is partitioned by month of occurred_at (usage queries prune by month); a DEFAULT partition
-- catches anything outside the months created so far, so an insert never fails for lack of one.
-- event_id is unique across partitions: the mover inserts only ids absent from every partition and
-- serializes itself with an advisory lock (a partitioned table cannot have a unique key without the
-- partition column).

CREATE TABLE billing.events (
    event_id        text NOT NULL,
    organisation_id text NOT NULL,
    project_id      text NOT NULL,
    metric          text NOT NULL,
    quantity        numeric(38, 12) NOT NULL,
    occurred_at     timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    properties      jsonb,
    fingerprint     text NOT NULL,     -- billing.edge_fingerprint of the edge row: tells a replay from a conflict
    ingested_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, occurred_at)
) PARTITION BY RANGE (occurred_at);

CREATE TABLE billing.events_default PARTITION OF billing.events DEFAULT;
-- The primary key (event_id first) serves the lookups by event_id. received_at and ingested_at grow
-- with insertion order, so a BRIN index serves their range scans at a fraction of a b-tree's cost.
CREATE INDEX events_occurred_at ON billing.events (occurred_at);
CREATE INDEX events_received_at ON billing.events USING brin (received_at);
CREATE INDEX events_ingested_at ON billing.events USING brin (ingested_at);

-- Creates the monthly partitions covering [from_month, to_month]; safe to call again.
CREATE FUNCTION billing.ensure_event_partitions(from_month date, to_month date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    m date := date_trunc('month', from_month)::date;
    created integer := 0;
    part text;
BEGIN
    WHILE m <= date_trunc('month', to_month)::date LOOP
        part := format('events_%s', to_char(m, 'YYYY_MM'));
        IF to_regclass('billing.' || part) IS NULL THEN
            -- rows already in the DEFAULT partition for this month move into the new one
            EXECUTE format('CREATE TABLE billing.%I (LIKE billing.events INCLUDING DEFAULTS)', part);
            EXECUTE format(
                'WITH moved AS (DELETE FROM billing.events_default
                     WHERE occurred_at >= %L AND occurred_at < %L RETURNING *)
                 INSERT INTO billing.%I SELECT * FROM moved',
                m, (m + interval '1 month')::date, part);
            EXECUTE format('ALTER TABLE billing.events ATTACH PARTITION billing.%I FOR VALUES FROM (%L) TO (%L)',
                part, m, (m + interval '1 month')::date);
            created := created + 1;
        END IF;
        m := (m + interval '1 month')::date;
    END LOOP;
    RETURN created;
END $$;

-- The identity of an edge row's payload: tells a replay (same fingerprint) from a conflict.
-- NULL columns get a marker so that (NULL, 'a') and ('a', NULL) differ; a row without event_id is
-- told apart by its edge rowid.
CREATE FUNCTION billing.edge_fingerprint(event_id text, organisation_id text, project_id text, metric text,
                                         quantity text, occurred_at text, properties text, edge_rowid bigint)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT md5(coalesce(organisation_id, E'\x1e') || E'\x1f' || coalesce(project_id, E'\x1e') || E'\x1f'
               || coalesce(metric, E'\x1e') || E'\x1f' || coalesce(quantity, E'\x1e') || E'\x1f'
               || coalesce(occurred_at, E'\x1e') || E'\x1f' || coalesce(properties, E'\x1e')
               || CASE WHEN event_id IS NULL THEN E'\x1f' || edge_rowid::text ELSE '' END)
$$;

CREATE TABLE billing.quarantined_events (
    quarantine_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        text,              -- as the edge had it (may be the bad part)
    reason          text NOT NULL,     -- machine code: bad_quantity, bad_occurred_at, ...
    detail          text NOT NULL,     -- human sentence
    raw             jsonb NOT NULL,    -- the edge row exactly as read, every column as text
    fingerprint     text NOT NULL,
    received_at     timestamptz,       -- parsed edge received_at when it parses
    quarantined_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE NULLS NOT DISTINCT (event_id, fingerprint)
);
CREATE INDEX quarantined_events_received_at ON billing.quarantined_events (received_at);
