-- The outbox table for SQLite. `outbox_events` is the default name; the library's migration substitutes the
-- configured one. Every statement is idempotent. See docs/design.md for why each column and index exists.
-- SQLite has one writer at a time, so claims need no lock table: each claim is a single UPDATE ... RETURNING.
CREATE TABLE IF NOT EXISTS outbox_events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT    NOT NULL UNIQUE,
    event_type      TEXT    NOT NULL,
    data_version    TEXT    NOT NULL,
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    correlation_id  TEXT,
    causation_id    TEXT,
    traceparent     TEXT,
    tracestate      TEXT,
    occurred_at     TEXT    NOT NULL,
    status          INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    locked_until    INTEGER,
    claim_token     INTEGER,
    last_error      TEXT,
    published_at    TEXT
);
CREATE INDEX IF NOT EXISTS outbox_events_pending_idx ON outbox_events (id) WHERE status = 0;
CREATE INDEX IF NOT EXISTS outbox_events_aggregate_idx ON outbox_events (aggregate_type, aggregate_id, id) WHERE status = 0;
CREATE INDEX IF NOT EXISTS outbox_events_dead_idx ON outbox_events (id) WHERE status = 2;
CREATE INDEX IF NOT EXISTS outbox_events_published_idx ON outbox_events (published_at) WHERE status = 1;
-- The relays at work on the table, each as it last reported itself (see docs/design.md, "Relays"): what
-- `outbox status` and the ops dashboard show. Times are Unix microseconds, as the relay's clock read them.
CREATE TABLE IF NOT EXISTS outbox_events_relays (
    relay_id      TEXT    PRIMARY KEY,
    name          TEXT    NOT NULL,
    started_at    INTEGER NOT NULL,
    heartbeat_at  INTEGER NOT NULL,
    published     INTEGER NOT NULL DEFAULT 0,
    dead_lettered INTEGER NOT NULL DEFAULT 0
);
-- Each event's partition: a stable hash of its aggregate, written by add_event (docs/design.md, "The commit-order
-- cursor"). SQLite has no ADD COLUMN IF NOT EXISTS: the migration asks the catalog first.
ALTER TABLE outbox_events ADD COLUMN partition_no INTEGER;
-- The commit-order cursor (docs/design.md, "The commit-order cursor"). SQLite has one writer at a time and
-- AUTOINCREMENT ids are never reused, so id order is commit order: a partition's log is its ids.
CREATE INDEX IF NOT EXISTS outbox_events_log_idx ON outbox_events (partition_no, id) WHERE status = 0;
CREATE TABLE IF NOT EXISTS outbox_events_cursors (
    partition_no INTEGER PRIMARY KEY,
    partitions   INTEGER NOT NULL,
    owner        TEXT,
    lease_until  INTEGER,
    epoch        INTEGER NOT NULL DEFAULT 0,
    snap_from    TEXT    NOT NULL,
    snap_to      TEXT,
    after_id     INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS outbox_events_parked (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              INTEGER NOT NULL UNIQUE,
    partition_no    INTEGER NOT NULL,
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS outbox_events_parked_idx ON outbox_events_parked (partition_no, aggregate_type, aggregate_id, seq);
