-- billing.ensure_event_partitions (0003), safe while other transactions insert events. The mover
-- has batches in the warehouse on several connections at once, and creates a month's partition while
-- another batch may be inserting (billing_pipeline/ingestion/mover.py). That insert may already have
-- rows of the month in the DEFAULT partition, not committed: moving the committed ones would miss
-- them, and ATTACH would fail on finding them. Or it may have started before the ATTACH and route a
-- row of the month to DEFAULT after it ("violates partition constraint").
-- So, for a missing month, the function first takes billing.events in SHARE ROW EXCLUSIVE mode: it
-- waits for every insert in flight to commit and new inserts wait for it; readers wait only while
-- ATTACH holds the DEFAULT partition. Then it looks again (a concurrent call may have created the
-- month meanwhile), moves the month's rows out of DEFAULT and attaches the partition, as before. A
-- month that exists costs one catalog look-up and takes no lock.
-- Call it in a transaction that has not inserted events itself: two such callers would wait for each
-- other.

CREATE OR REPLACE FUNCTION billing.ensure_event_partitions(from_month date, to_month date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    m date := date_trunc('month', from_month)::date;
    created integer := 0;
    part text;
BEGIN
    WHILE m <= date_trunc('month', to_month)::date LOOP
        part := format('events_%s', to_char(m, 'YYYY_MM'));
        IF to_regclass('billing.' || part) IS NULL THEN
            LOCK TABLE billing.events IN SHARE ROW EXCLUSIVE MODE;
        END IF;
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

-- The UTC day whose monthly partition holds an event: the day it occurred, or NULL when it occurred
-- more than 400 days before it arrived (it stays in DEFAULT: no month is created for it). The mover
-- asks ensure_event_partitions for the first and last such day of the rows it inserted.
CREATE FUNCTION billing.event_partition_day(occurred_at timestamptz, received_at timestamptz) RETURNS date
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN occurred_at >= received_at - interval '400 days' THEN (occurred_at AT TIME ZONE 'UTC')::date END
$$;
