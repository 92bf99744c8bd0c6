//! Writers: tasks that commit a domain row and its events in one transaction, rolling back a random third.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use outbox::EventEnvelope;
use outbox::repository::OutboxRepository;
use outbox::sea_orm::{ConnectionTrait, DatabaseConnection, Statement, TransactionTrait};
use outbox_tests::backend::TestDb;
use outbox_tests::events::opened;
use tokio::task::JoinHandle;

use crate::ledger::{Key, Ledger};

/// How the writers write.
#[derive(Clone, Copy)]
pub struct Plan {
    pub writers: u32,
    pub aggregates: u32,
    pub events_per_transaction: u32,
    /// Between two transactions of one writer; zero is as fast as the database allows.
    pub pause: Duration,
}

/// Running writers; [`stop`](Self::stop) returns what they did.
pub struct Writers {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<Ledger>>,
}

/// Ids of the domain rows, unique across writers.
static NEXT_USER: AtomicI64 = AtomicI64::new(1);

impl Writers {
    pub fn start(t: &TestDb, plan: Plan) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicUsize::new(0));
        // Each writer owns the aggregates `a % writers == w`, so its sequence numbers per aggregate follow both
        // its insert order and its commit order: the order the outbox must keep.
        let tasks = (0..plan.writers)
            .map(|w| {
                let aggregates: Vec<String> = (0..plan.aggregates)
                    .filter(|a| a % plan.writers == w)
                    .map(|a| format!("agg-{a}"))
                    .collect();
                let writer = Writer {
                    db: t.db.clone(),
                    outbox: t.outbox.clone(),
                    users: t.users.clone(),
                    aggregates,
                    plan,
                    stop: stop.clone(),
                    committed: committed.clone(),
                };
                tokio::spawn(writer.run())
            })
            .collect();
        Self {
            stop,
            committed,
            tasks,
        }
    }

    /// Events committed so far.
    pub fn committed(&self) -> usize {
        self.committed.load(Ordering::Relaxed)
    }

    /// Waits until `n` events are committed (60 s at most).
    pub async fn wait_for(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.committed() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the writers committed {} of {n} events in 60 s",
                self.committed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        let mut ledger = Ledger::default();
        for task in self.tasks {
            ledger.merge(task.await.expect("a writer panicked"));
        }
        ledger
    }
}

struct Writer {
    db: DatabaseConnection,
    outbox: OutboxRepository,
    users: String,
    aggregates: Vec<String>,
    plan: Plan,
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicUsize>,
}

enum Outcome {
    Committed,
    RolledBack,
    /// The commit itself failed: stored or not, nobody can tell.
    Uncertain,
}

impl Writer {
    async fn run(self) -> Ledger {
        let mut ledger = Ledger::default();
        let mut seq: HashMap<&str, u32> = HashMap::new();
        let mut next = 0;
        while !self.stop.load(Ordering::Relaxed) {
            let mut keys: Vec<Key> = Vec::new();
            for _ in 0..self.plan.events_per_transaction {
                let aggregate = &self.aggregates[next % self.aggregates.len()];
                next += 1;
                let s = seq.entry(aggregate).or_default();
                *s += 1;
                keys.push((aggregate.clone(), *s));
            }
            let rollback = fastrand::u8(..3) == 0;
            let target = match self.transaction(&keys, rollback).await {
                Outcome::Committed => {
                    self.committed.fetch_add(keys.len(), Ordering::Relaxed);
                    &mut ledger.committed
                }
                Outcome::RolledBack => &mut ledger.rolled_back,
                Outcome::Uncertain => &mut ledger.uncertain,
            };
            target.extend(keys);
            if !self.plan.pause.is_zero() {
                tokio::time::sleep(self.plan.pause).await;
            }
        }
        ledger
    }

    /// One domain row and its events. Any failure before the commit leaves nothing behind (the transaction is
    /// dropped); the scenarios that cut connections make that happen.
    async fn transaction(&self, keys: &[Key], rollback: bool) -> Outcome {
        let Ok(txn) = self.db.begin().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Outcome::RolledBack;
        };
        let user = NEXT_USER.fetch_add(1, Ordering::Relaxed);
        let backend = txn.get_database_backend();
        let placeholders = match backend {
            outbox::sea_orm::DbBackend::Postgres => "$1, $2",
            _ => "?, ?",
        };
        let insert = Statement::from_sql_and_values(
            backend,
            format!(
                "INSERT INTO {} (id, email) VALUES ({placeholders})",
                self.users
            ),
            [user.into(), format!("user{user}@example.com").into()],
        );
        let envelopes = keys
            .iter()
            .map(|(aggregate, seq)| EventEnvelope::new(opened(aggregate, *seq)));
        let stored = match txn.execute_raw(insert).await {
            Ok(_) => self.outbox.add_events(&txn, envelopes).await.is_ok(),
            Err(_) => false,
        };
        if !stored || rollback {
            let _ = txn.rollback().await;
            if !stored {
                // The database is away: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            return Outcome::RolledBack;
        }
        match txn.commit().await {
            Ok(()) => Outcome::Committed,
            Err(_) => Outcome::Uncertain,
        }
    }
}
