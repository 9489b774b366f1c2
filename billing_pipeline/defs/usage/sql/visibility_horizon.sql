-- The earliest ingested_at an event not yet visible to a snapshot taken now could have: now(), or
-- the start of the oldest transaction still open on this database (its rows, committed later, carry
-- that start time in ingested_at). Sessions that have not started a transaction do not count, nor
-- do background workers (autovacuum): they insert no events.
SELECT least(
    now(),
    (SELECT min(xact_start)
     FROM pg_stat_activity
     WHERE datname = current_database()
       AND pid <> pg_backend_pid()
       AND backend_type = 'client backend'
       AND xact_start IS NOT NULL)
) AS horizon
