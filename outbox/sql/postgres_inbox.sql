-- The consumer side's inbox for PostgreSQL: one row per message a consumer has applied, written in the handler's
-- own transaction so the domain change and "processed" commit together (see `outbox::repository::Inbox`).
-- `outbox_inbox` is the default name; the library substitutes the configured one. Idempotent.
-- `processed_at` is Unix microseconds; retention deletes by it (the dedup window).
CREATE TABLE IF NOT EXISTS outbox_inbox (
    consumer     VARCHAR(255) NOT NULL,
    message_id   VARCHAR(255) NOT NULL,
    processed_at BIGINT       NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX IF NOT EXISTS outbox_inbox_processed_idx ON outbox_inbox (processed_at);
-- Messages a consumer could not apply (no handler, undecodable, or out of retries), as the structured CloudEvent
-- it received, with the reason: kept for an operator to replay once the cause is fixed.
CREATE TABLE IF NOT EXISTS outbox_inbox_dead_letters (
    consumer   VARCHAR(255) NOT NULL,
    message_id VARCHAR(255) NOT NULL,
    event_type VARCHAR(255) NOT NULL,
    cloudevent TEXT         NOT NULL,
    reason     TEXT         NOT NULL,
    attempts   INT          NOT NULL,
    failed_at  BIGINT       NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
