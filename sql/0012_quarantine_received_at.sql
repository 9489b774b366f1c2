-- Quarantined rows keep their received_at whenever it parses, whatever their reason: before this,
-- rows quarantined for a missing field were stored without it, and event reconciliation, which
-- buckets the quarantine by received hour, reported them as missing from the warehouse. Repair the
-- rows stored that way from their raw edge text (row by row in a block, so that a text that only
-- looks like a timestamp is left NULL rather than failing the migration, on every supported server).
DO $$
DECLARE
    q record;
BEGIN
    FOR q IN
        SELECT quarantine_id, raw ->> 'received_at' AS received_text FROM billing.quarantined_events
        WHERE received_at IS NULL AND billing.is_utc_timestamp_text(raw ->> 'received_at')
    LOOP
        BEGIN
            UPDATE billing.quarantined_events SET received_at = CAST(q.received_text AS timestamptz)
            WHERE quarantine_id = q.quarantine_id;
        EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow THEN
            NULL;  -- the right shape, not a time: it stays without one
        END;
    END LOOP;
END $$;

-- An empty quantity is not a plain decimal (it passed the shape check before, and then failed the
-- clean insert's cast, sending its whole batch down the checked path): at least one digit.
CREATE OR REPLACE FUNCTION billing.is_plain_decimal_text(value text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT translate(value, '0123456789.+-', '') = ''
        AND translate(value, '.+-', '') <> ''
        AND (strpos(value, '.') = 0 OR length(value) - strpos(value, '.') <= 12)
$$;
