-- The consumer side's inbox for SQLite; see postgres_inbox.sql.
CREATE TABLE IF NOT EXISTS outbox_inbox (
    consumer     TEXT    NOT NULL,
    message_id   TEXT    NOT NULL,
    processed_at INTEGER NOT NULL,
    PRIMARY KEY (consumer, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outbox_inbox_processed_idx ON outbox_inbox (processed_at);
-- The consumer's dead letters; see postgres_inbox.sql.
CREATE TABLE IF NOT EXISTS outbox_inbox_dead_letters (
    consumer   TEXT    NOT NULL,
    message_id TEXT    NOT NULL,
    event_type TEXT    NOT NULL,
    cloudevent TEXT    NOT NULL,
    reason     TEXT    NOT NULL,
    attempts   INTEGER NOT NULL,
    failed_at  INTEGER NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
