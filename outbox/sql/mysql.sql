-- The outbox table for MySQL 8 and MariaDB 10.6+. `outbox_events` is the default name; the library's migration
-- substitutes the configured one. Every statement is idempotent. See docs/design.md for why each column and index
-- exists. utf8mb4_bin makes aggregate ids compare exactly (the default collation would merge "A-1" and "a-1").
CREATE TABLE IF NOT EXISTS outbox_events (
    id              BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    event_id        CHAR(36)     NOT NULL,
    event_type      VARCHAR(255) NOT NULL,
    data_version    VARCHAR(32)  NOT NULL,
    aggregate_type  VARCHAR(255) NOT NULL,
    aggregate_id    VARCHAR(255) NOT NULL,
    payload         LONGTEXT     NOT NULL,
    correlation_id  VARCHAR(255) NULL,
    causation_id    VARCHAR(255) NULL,
    traceparent     VARCHAR(64)  NULL,
    tracestate      VARCHAR(512) NULL,
    occurred_at     DATETIME(6)  NOT NULL,
    status          SMALLINT     NOT NULL DEFAULT 0,
    attempts        INT          NOT NULL DEFAULT 0,
    next_attempt_at BIGINT       NULL,
    locked_until    BIGINT       NULL,
    claim_token     BIGINT       NULL,
    last_error      TEXT         NULL,
    published_at    DATETIME(6)  NULL,
    UNIQUE KEY outbox_events_event_id_key (event_id),
    KEY outbox_events_pending_idx (status, id),
    KEY outbox_events_aggregate_idx (aggregate_type, aggregate_id, status, id),
    KEY outbox_events_published_idx (status, published_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE TABLE IF NOT EXISTS outbox_events_lock (id SMALLINT NOT NULL PRIMARY KEY) ENGINE = InnoDB;
INSERT IGNORE INTO outbox_events_lock (id) VALUES (1);
-- The relays at work on the table, each as it last reported itself (see docs/design.md, "Relays"): what
-- `outbox status` and the ops dashboard show. Times are Unix microseconds, as the relay's clock read them.
CREATE TABLE IF NOT EXISTS outbox_events_relays (
    relay_id      VARCHAR(36)  NOT NULL PRIMARY KEY,
    name          VARCHAR(255) NOT NULL,
    started_at    BIGINT       NOT NULL,
    heartbeat_at  BIGINT       NOT NULL,
    published     BIGINT       NOT NULL DEFAULT 0,
    dead_lettered BIGINT       NOT NULL DEFAULT 0
) ENGINE = InnoDB;
-- Each event's partition: a stable hash of its aggregate, written by add_event (docs/design.md, "The commit-order
-- cursor"). MySQL has no ADD COLUMN IF NOT EXISTS: the migration asks the catalog first.
ALTER TABLE outbox_events ADD COLUMN partition_no SMALLINT NULL;
-- The commit-order cursor (docs/design.md, "The commit-order cursor"). MySQL has no snapshot a reader can take,
-- so commit order comes from the writer: under OUTBOX_DELIVERY=cursor, each event stored takes the next number of
-- its partition's counter row in the writer's transaction (the trigger below) and keeps it in `seq`. The counter
-- row stays locked until that transaction ends, so a partition's numbers are handed out, and made visible, in
-- commit order; a rollback takes its numbers back with it.
ALTER TABLE outbox_events ADD COLUMN seq BIGINT NULL;
ALTER TABLE outbox_events ADD INDEX outbox_events_log_idx (partition_no, seq);
CREATE TABLE IF NOT EXISTS outbox_events_sequences (
    partition_no SMALLINT NOT NULL PRIMARY KEY,
    next_seq     BIGINT   NOT NULL
) ENGINE = InnoDB;
-- Numbers the events add_event stores with `seq = 0` (under the cursor) from their partitions' counter rows, as
-- they are inserted: in the INSERT itself the numbers cost the writer no round trip of their own, and they
-- commit with their events even outside a transaction. Rows stored with a number (adoption) or none (`rows`
-- writers) are left alone.
CREATE TRIGGER IF NOT EXISTS outbox_events_seq BEFORE INSERT ON outbox_events FOR EACH ROW IF NEW.seq = 0 THEN INSERT INTO outbox_events_sequences (partition_no, next_seq) VALUES (NEW.partition_no, LAST_INSERT_ID(1)) ON DUPLICATE KEY UPDATE next_seq = LAST_INSERT_ID(next_seq + 1); SET NEW.seq = LAST_INSERT_ID(); END IF;
CREATE TABLE IF NOT EXISTS outbox_events_cursors (
    partition_no SMALLINT NOT NULL PRIMARY KEY,
    partitions   SMALLINT NOT NULL,
    owner        VARCHAR(36) NULL,
    lease_until  BIGINT   NULL,
    epoch        BIGINT   NOT NULL DEFAULT 0,
    snap_from    VARCHAR(64) NOT NULL,
    snap_to      VARCHAR(64) NULL,
    after_id     BIGINT   NOT NULL DEFAULT 0
) ENGINE = InnoDB;
CREATE TABLE IF NOT EXISTS outbox_events_parked (
    id              BIGINT       NOT NULL PRIMARY KEY,
    seq             BIGINT       NOT NULL AUTO_INCREMENT UNIQUE,
    partition_no    SMALLINT     NOT NULL,
    aggregate_type  VARCHAR(255) NOT NULL,
    aggregate_id    VARCHAR(255) NOT NULL,
    attempts        INT          NOT NULL DEFAULT 0,
    next_attempt_at BIGINT       NOT NULL,
    last_error      TEXT         NULL,
    KEY outbox_events_parked_idx (partition_no, aggregate_type, aggregate_id, seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
