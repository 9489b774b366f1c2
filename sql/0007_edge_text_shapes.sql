-- The shapes an edge row's text columns must have, one home for both ways the mover takes a batch
-- (billing_pipeline/ingestion/sql: insert_clean.sql for the clean rows, check_stage.sql for the rest).
-- Each tells only whether the text has the right form, with LIKE, translate and strpos (several times
-- cheaper than regular expressions); whether the value parses is PostgreSQL's own input function's
-- call. Plain SQL expressions, so the planner inlines them where they are used.

-- ISO 8601 in UTC: a date, 'T', a time, and Z, +00:00 or +00 at the end.
CREATE FUNCTION billing.is_utc_timestamp_text(value text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT value LIKE '____-__-__T__:__:__%'
        AND (value LIKE '%Z' OR value LIKE '%+00:00' OR value LIKE '%+00')
$$;

-- ISO 8601 with an explicit offset: Z, or +hh[:mm] / -hh[:mm] after the time.
CREATE FUNCTION billing.is_offset_timestamp_text(value text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT value LIKE '____-__-__%__:__:__%' AND substr(value, 11, 1) IN ('T', ' ')
        AND (value LIKE '%Z' OR strpos(substr(value, 20), '+') > 0 OR strpos(substr(value, 20), '-') > 0)
$$;

-- A plain decimal: digits, a point, a sign, at most 12 fraction digits (numeric(38,12) would round
-- more); the number of integer digits is numeric(38,12)'s to refuse.
CREATE FUNCTION billing.is_plain_decimal_text(value text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT translate(value, '0123456789.+-', '') = ''
        AND (strpos(value, '.') = 0 OR length(value) - strpos(value, '.') <= 12)
$$;

-- A JSON object: its first non-blank character is '{'.
CREATE FUNCTION billing.is_json_object_text(value text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ltrim(value, E' \t\r\n') LIKE '{%'
$$;
