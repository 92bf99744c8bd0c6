//! The relay as a process of its own (`relay_child`), publishing into a deliveries table the test reads back.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use outbox::sea_orm::{ConnectionTrait, DbBackend, Statement};
use outbox_tests::backend::TestDb;
use outbox_tests::events::AccountOpened;

use crate::ledger::{Key, Tally};

pub fn postgres_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn mariadb_url() -> String {
    std::env::var("TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// Where the child relays deliver: one row per publish, in arrival order.
pub struct Sink {
    pub table: String,
}

impl Sink {
    pub async fn create(t: &TestDb) -> Self {
        let table = format!("{}_deliveries", t.outbox.table());
        let serial = match t.db.get_database_backend() {
            DbBackend::MySql => "BIGINT AUTO_INCREMENT PRIMARY KEY",
            _ => "BIGSERIAL PRIMARY KEY",
        };
        t.db.execute_unprepared(&format!(
            "CREATE TABLE {table} (n {serial}, event_id TEXT NOT NULL, \
             aggregate_id TEXT NOT NULL, payload TEXT NOT NULL, lost_ack BOOLEAN NOT NULL, relay TEXT NOT NULL)"
        ))
        .await
        .expect("create the deliveries table");
        t.db.execute_unprepared(&format!(
            "CREATE TABLE {table}_cut (event_id TEXT NOT NULL)"
        ))
        .await
        .expect("create the cut-publishes table");
        Self { table }
    }

    async fn count(&self, t: &TestDb, sql: &str) -> usize {
        t.scalar(&sql.replace("{sink}", &self.table)).await as usize
    }

    /// Distinct events delivered.
    pub async fn unique(&self, t: &TestDb) -> usize {
        self.count(t, "SELECT COUNT(DISTINCT event_id) FROM {sink}")
            .await
    }

    /// Deliveries the relay never heard of: each one is a duplicate the consumer is owed.
    pub async fn lost_acks(&self, t: &TestDb) -> usize {
        self.count(t, "SELECT COUNT(*) FROM {sink} WHERE lost_ack")
            .await
    }

    /// Judges `tally` (see [`Tally::check`]), counting among the duplicates it explains every publish the relay's
    /// publish timeout cut before it answered: its INSERT may have committed all the same, and the event is then
    /// delivered again (a documented duplicate window). The row names them when there are any.
    pub async fn check(
        &self,
        t: &TestDb,
        tally: &Tally,
        scenario: &str,
        injected: &str,
        allowed_duplicates: usize,
    ) {
        if let Some((aggregate, ..)) = tally.out_of_order.first() {
            self.explain(t, aggregate).await;
        }
        let cut = self.count(t, "SELECT COUNT(*) FROM {sink}_cut").await;
        let note = if cut > 0 {
            format!("; {cut} publishes cut by the 1-s publish timeout")
        } else {
            String::new()
        };
        tally.check(
            scenario,
            &format!("{injected}{note}"),
            allowed_duplicates + cut,
        );
    }

    /// Prints what the outbox holds of `aggregate` and every delivery of it, with the relay process that made it:
    /// what a failure of order needs to be understood after the tables are gone. The orderings name their table:
    /// PostgreSQL would otherwise sort by the text column of the same name.
    async fn explain(&self, t: &TestDb, aggregate: &str) {
        let backend = t.db.get_database_backend();
        let text = |column: &str| match backend {
            DbBackend::MySql => format!("CAST({column} AS CHAR)"),
            _ => format!("CAST({column} AS TEXT)"),
        };
        let queries = [
            (
                "deliveries (n, relay, lost ack, cut, payload)",
                format!(
                    "SELECT {}, relay, {}, {}, payload FROM {sink} d WHERE d.aggregate_id = '{aggregate}' ORDER BY d.n",
                    text("n"),
                    text("lost_ack"),
                    text(&format!(
                        "EXISTS (SELECT 1 FROM {}_cut c WHERE c.event_id = d.event_id)",
                        self.table
                    )),
                    sink = self.table
                ),
            ),
            (
                "outbox rows (id, status, partition, attempts, payload)",
                format!(
                    "SELECT {}, {}, {}, {}, payload FROM {table} o WHERE o.aggregate_id = '{aggregate}' ORDER BY o.id",
                    text("id"),
                    text("status"),
                    text("partition_no"),
                    text("attempts"),
                    table = t.outbox.table()
                ),
            ),
            (
                "parked (id, seq, attempts, next attempt, last error)",
                format!(
                    "SELECT {}, {}, {}, {}, last_error FROM {table}_parked p WHERE p.aggregate_id = '{aggregate}' \
                     ORDER BY p.seq",
                    text("id"),
                    text("seq"),
                    text("attempts"),
                    text("next_attempt_at"),
                    table = t.outbox.table()
                ),
            ),
        ];
        for (what, sql) in queries {
            match t
                .db
                .query_all_raw(Statement::from_string(backend, sql))
                .await
            {
                Ok(rows) => {
                    eprintln!("{aggregate}: {what}");
                    for row in rows {
                        let cells: Vec<String> = (0..5)
                            .map(|i| row.try_get_by_index::<String>(i).unwrap_or_default())
                            .collect();
                        eprintln!("  {}", cells.join(" | "));
                    }
                }
                Err(error) => eprintln!("{aggregate}: {what} could not be read: {error}"),
            }
        }
    }

    /// Waits until `n` distinct events arrived, failing the test after `within`.
    pub async fn wait_for(&self, t: &TestDb, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let unique = self.unique(t).await;
            if unique >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{unique} of {n} events arrived in {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every delivery, in arrival order.
    pub async fn arrivals(&self, t: &TestDb) -> Vec<Key> {
        let rows =
            t.db.query_all_raw(Statement::from_string(
                t.db.get_database_backend(),
                format!("SELECT payload FROM {} ORDER BY n", self.table),
            ))
            .await
            .expect("read the deliveries");
        rows.iter()
            .map(|row| {
                let payload: String = row.try_get_by_index(0).expect("a payload");
                let event: AccountOpened =
                    serde_json::from_str(&payload).expect("a delivered AccountOpened");
                (event.account, event.seq)
            })
            .collect()
    }

    /// Ends a scenario: stops the relays that deliver here (they would otherwise spend their last moments on
    /// tables that are gone), then drops the deliveries tables and the outbox tables.
    pub async fn tear_down(self, t: TestDb, relays: impl IntoIterator<Item = RelayProcess>) {
        relays.into_iter().for_each(drop);
        let _ =
            t.db.execute_unprepared(&format!("DROP TABLE {0}, {0}_cut", self.table))
                .await;
        t.drop_tables().await;
    }
}

/// Fault injection for the child's publisher.
#[derive(Clone, Copy, Default)]
pub struct Faults {
    pub fail: f64,
    pub lose_ack: f64,
}

/// A running `relay_child`.
pub struct RelayProcess {
    child: Child,
}

impl RelayProcess {
    pub fn spawn(t: &TestDb, sink: &Sink, faults: Faults) -> Self {
        Self::spawn_on(&postgres_url(), t, sink, faults)
    }

    /// With a database URL of the test's choosing (an `application_name` to find its connections by).
    pub fn spawn_on(url: &str, t: &TestDb, sink: &Sink, faults: Faults) -> Self {
        Self::spawn_with(url, t, sink, faults, &[])
    }

    /// With `OUTBOX_*` settings in its environment as well; the table's delivery design unless they name one.
    pub fn spawn_with(
        url: &str,
        t: &TestDb,
        sink: &Sink,
        faults: Faults,
        settings: &[(&str, &str)],
    ) -> Self {
        let delivery = if t.outbox.config().delivery == outbox::Delivery::Cursor {
            "cursor"
        } else {
            "rows"
        };
        let child = Command::new(env!("CARGO_BIN_EXE_relay_child"))
            .args([url, t.outbox.table(), sink.table.as_str()])
            .args([faults.fail.to_string(), faults.lose_ack.to_string()])
            .env("OUTBOX_DELIVERY", delivery)
            .envs(settings.iter().copied())
            .spawn()
            .expect("start the relay process");
        Self { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown, no release, leases left behind.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL the relay");
        self.child.wait().expect("reap the relay");
    }

    /// SIGTERM, then waits for the exit: its status and how long the relay took.
    pub fn terminate(mut self, within: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        let pid = self.child.id().to_string();
        outbox_tests::run_command("kill", &["-TERM", &pid]);
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the relay") {
                return (status, started.elapsed());
            }
            if started.elapsed() > within {
                let _ = self.child.kill();
                panic!("the relay did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Resident and peak resident memory in KiB, from `/proc`.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the relay process is alive");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
