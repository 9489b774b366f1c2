-- billing.input_is_valid(text, type): can this text be read as that type? PostgreSQL 16 and later
-- answer with pg_input_is_valid; the wrapper is a plain SQL expression the planner inlines, so the
-- mover's checks cost what they cost before. PostgreSQL 15 has no such function: there the wrapper
-- casts and catches the data exception (slower per row, same answers). Which one is made depends on
-- the server the migration runs on.
DO $migration$
BEGIN
    IF current_setting('server_version_num')::int >= 160000 THEN
        CREATE FUNCTION billing.input_is_valid(value text, type_name text) RETURNS boolean
        LANGUAGE sql STABLE PARALLEL SAFE
        AS 'SELECT pg_catalog.pg_input_is_valid(value, type_name)';
    ELSE
        CREATE FUNCTION billing.input_is_valid(value text, type_name text) RETURNS boolean
        LANGUAGE plpgsql STABLE PARALLEL SAFE AS $body$
        BEGIN
            IF value IS NULL THEN
                RETURN NULL;
            END IF;
            CASE type_name  -- the types the pipeline asks about, without dynamic SQL
                WHEN 'timestamptz' THEN PERFORM value::timestamptz;
                WHEN 'numeric(38,12)' THEN PERFORM value::numeric(38, 12);
                WHEN 'jsonb' THEN PERFORM value::jsonb;
                ELSE EXECUTE format('SELECT %L::%s', value, type_name);
            END CASE;
            RETURN true;
        EXCEPTION WHEN data_exception THEN
            RETURN false;
        END $body$;
    END IF;
END $migration$;
