-- One batch of edge rows, exactly as read (every column text), dropped at commit.
CREATE TEMP TABLE edge_stage (
    edge_rowid      bigint NOT NULL,
    event_id        text,
    organisation_id text,
    project_id      text,
    metric          text,
    quantity        text,
    occurred_at     text,
    received_at     text,
    properties      text,
    processed_at    text
) ON COMMIT DROP
