-- The consumer side's inbox for MySQL 8 and MariaDB 10.6+; see postgres_inbox.sql. utf8mb4_bin so message ids
-- compare byte for byte (the default collation would take "A-1" and "a-1" for one message).
CREATE TABLE IF NOT EXISTS outbox_inbox (
    consumer     VARCHAR(255) NOT NULL,
    message_id   VARCHAR(255) NOT NULL,
    processed_at BIGINT       NOT NULL,
    PRIMARY KEY (consumer, message_id),
    KEY outbox_inbox_processed_idx (processed_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
-- The consumer's dead letters; see postgres_inbox.sql.
CREATE TABLE IF NOT EXISTS outbox_inbox_dead_letters (
    consumer   VARCHAR(255) NOT NULL,
    message_id VARCHAR(255) NOT NULL,
    event_type VARCHAR(255) NOT NULL,
    cloudevent LONGTEXT     NOT NULL,
    reason     TEXT         NOT NULL,
    attempts   INT          NOT NULL,
    failed_at  BIGINT       NOT NULL,
    PRIMARY KEY (consumer, message_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
