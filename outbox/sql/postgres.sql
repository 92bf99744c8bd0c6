-- The outbox table for PostgreSQL. `outbox_events` is the default name; the library's migration substitutes the
-- configured one. Every statement is idempotent. See docs/design.md for why each column and index exists.
CREATE TABLE IF NOT EXISTS outbox_events (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        UUID         NOT NULL,
    event_type      VARCHAR(255) NOT NULL,
    data_version    VARCHAR(32)  NOT NULL,
    aggregate_type  VARCHAR(255) NOT NULL,
    aggregate_id    VARCHAR(255) NOT NULL,
    payload         TEXT         NOT NULL,
    correlation_id  VARCHAR(255),
    causation_id    VARCHAR(255),
    traceparent     VARCHAR(64),
    tracestate      VARCHAR(512),
    occurred_at     TIMESTAMPTZ  NOT NULL,
    status          SMALLINT     NOT NULL DEFAULT 0,
    attempts        INTEGER      NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    locked_until    BIGINT,
    claim_token     BIGINT,
    last_error      TEXT,
    published_at    TIMESTAMPTZ,
    CONSTRAINT outbox_events_event_id_key UNIQUE (event_id)
) WITH (fillfactor = 50);
-- Half of every page stays free so that a claim's lease (claim_token, locked_until, in no index) is a HOT update:
-- a new row version on the same page and no index entries, 5x cheaper than a full update (measured). Also for
-- tables created before this setting; it applies to pages written from now on.
ALTER TABLE outbox_events SET (fillfactor = 50);
CREATE INDEX IF NOT EXISTS outbox_events_pending_idx ON outbox_events (id) WHERE status = 0;
-- Retrying events, which hold back their aggregates. Leases are left out so that claiming stays a HOT update; the
-- claim finds leased rows in the pending index. Replaces the earlier `blocked` index, which also held leases.
CREATE INDEX IF NOT EXISTS outbox_events_retrying_idx ON outbox_events (aggregate_type, aggregate_id, id)
    WHERE status = 0 AND next_attempt_at IS NOT NULL;
DROP INDEX IF EXISTS outbox_events_blocked_idx;
CREATE INDEX IF NOT EXISTS outbox_events_dead_idx ON outbox_events (id) WHERE status = 2;
CREATE INDEX IF NOT EXISTS outbox_events_published_idx ON outbox_events (published_at) WHERE status = 1;
CREATE TABLE IF NOT EXISTS outbox_events_lock (id SMALLINT PRIMARY KEY);
INSERT INTO outbox_events_lock (id) VALUES (1) ON CONFLICT DO NOTHING;
-- The relays at work on the table, each as it last reported itself (see docs/design.md, "Relays"): what
-- `outbox status` and the ops dashboard show. Times are Unix microseconds, as the relay's clock read them.
CREATE TABLE IF NOT EXISTS outbox_events_relays (
    relay_id      VARCHAR(36)  PRIMARY KEY,
    name          VARCHAR(255) NOT NULL,
    started_at    BIGINT       NOT NULL,
    heartbeat_at  BIGINT       NOT NULL,
    published     BIGINT       NOT NULL DEFAULT 0,
    dead_lettered BIGINT       NOT NULL DEFAULT 0
);
-- Whether the relay sleeps until a writer wakes it. A relay under load polls instead and sets it false, so that
-- writers stop sending NOTIFY: a transaction that NOTIFYs holds a database-wide lock from its commit until the
-- commit is on disk, which makes concurrent writers commit one at a time (docs/design.md, "Wake-ups").
-- True by default, so that relays of versions that do not know it are still woken.
ALTER TABLE outbox_events_relays ADD COLUMN IF NOT EXISTS wants_notify BOOLEAN NOT NULL DEFAULT TRUE;
-- Wakes relays the moment a transaction that stored events commits (they LISTEN on the table's name), while one
-- of them waits for that. Without the relays table (dropped by hand), every insert notifies, as before it
-- existed. PostgreSQL 14+ for CREATE OR REPLACE TRIGGER.
CREATE OR REPLACE FUNCTION outbox_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF to_regclass('outbox_events_relays') IS NULL THEN PERFORM pg_notify(TG_TABLE_NAME, ''); ELSIF EXISTS (SELECT 1 FROM outbox_events_relays WHERE wants_notify) THEN PERFORM pg_notify(TG_TABLE_NAME, ''); END IF; RETURN NULL; END $$;
CREATE OR REPLACE TRIGGER outbox_events_notify AFTER INSERT ON outbox_events FOR EACH STATEMENT EXECUTE FUNCTION outbox_events_notify();
-- The commit-order cursor (OUTBOX_DELIVERY=cursor; docs/design.md, "The commit-order cursor"): each event's
-- partition (a stable hash of its aggregate, written by add_event) and the transaction that stored it. Added
-- without a default first, so an existing table is not rewritten; rows stored before them are adopted by the first
-- cursor relay.
ALTER TABLE outbox_events ADD COLUMN IF NOT EXISTS partition_no SMALLINT;
ALTER TABLE outbox_events ADD COLUMN IF NOT EXISTS txid xid8;
ALTER TABLE outbox_events ALTER COLUMN txid SET DEFAULT pg_current_xact_id();
-- A window's bounds are found by transaction id; its events are then walked in id order.
CREATE INDEX IF NOT EXISTS outbox_events_txid_idx ON outbox_events (partition_no, txid) INCLUDE (id) WHERE status = 0;
CREATE INDEX IF NOT EXISTS outbox_events_log_idx ON outbox_events (partition_no, id) WHERE status = 0;
-- Pending rows the cursor has not adopted yet (stored before the upgrade, or by an older writer).
CREATE INDEX IF NOT EXISTS outbox_events_legacy_idx ON outbox_events (id)
    WHERE status = 0 AND (partition_no IS NULL OR txid IS NULL);
-- One row per partition: the snapshot read to, the window being read and how far, and the relay that owns it
-- (until `lease_until`, on the database's clock) with the epoch that fences its writes.
CREATE TABLE IF NOT EXISTS outbox_events_cursors (
    partition_no SMALLINT    PRIMARY KEY,
    partitions   SMALLINT    NOT NULL,
    owner        VARCHAR(64),
    lease_until  BIGINT,
    epoch        BIGINT      NOT NULL DEFAULT 0,
    snap_from    TEXT        NOT NULL,
    snap_to      TEXT,
    after_id     BIGINT      NOT NULL DEFAULT 0
);
-- Statistics for the few cursor rows, so the planner knows them few: guessing 300 rows, it costed the pending
-- count in millions and compiled it with JIT first (0.4 s). Relays analyze it again once they created the rows.
ANALYZE outbox_events_cursors;
-- Events of aggregates held back by a failure: the failed event and every later one of its aggregate, retried
-- here in order (`seq`) while the rest of the partition flows past.
CREATE TABLE IF NOT EXISTS outbox_events_parked (
    id              BIGINT       PRIMARY KEY,
    partition_no    SMALLINT     NOT NULL,
    aggregate_type  VARCHAR(255) NOT NULL,
    aggregate_id    VARCHAR(255) NOT NULL,
    seq             BIGINT       GENERATED ALWAYS AS IDENTITY,
    attempts        INTEGER      NOT NULL DEFAULT 0,
    next_attempt_at BIGINT       NOT NULL,
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS outbox_events_parked_idx ON outbox_events_parked (partition_no, aggregate_type, aggregate_id, seq);
