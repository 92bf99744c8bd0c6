//! What was written against what arrived, and the report row each scenario leaves.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;

use outbox::EventEnvelope;
use outbox_tests::backend::TestDb;
use outbox_tests::events::opened;
use tokio::sync::{Mutex, MutexGuard};

/// An event, as the accounting knows it: its aggregate and its sequence number there. Writers give every event
/// its own `(aggregate, seq)`, so this pair identifies it at the consumer whatever the broker kept of its id.
pub type Key = (String, u32);

/// What the writers did.
#[derive(Default)]
pub struct Ledger {
    /// Events whose transaction committed.
    pub committed: HashSet<Key>,
    pub rolled_back: HashSet<Key>,
    /// The commit call failed (the connection dropped mid-commit): the events may or may not be stored, so
    /// they may arrive and need not.
    pub uncertain: HashSet<Key>,
}

impl Ledger {
    pub fn merge(&mut self, other: Ledger) {
        self.committed.extend(other.committed);
        self.rolled_back.extend(other.rolled_back);
        self.uncertain.extend(other.uncertain);
    }

    /// Counts the arrivals against the ledger.
    pub fn tally(&self, arrivals: impl IntoIterator<Item = Key>) -> Tally {
        let mut seen = HashSet::new();
        let mut last: HashMap<String, u32> = HashMap::new();
        let mut tally = Tally {
            written: self.committed.len(),
            rolled_back: self.rolled_back.len(),
            ..Tally::default()
        };
        for key in arrivals {
            tally.delivered += 1;
            if !seen.insert(key.clone()) {
                tally.duplicates += 1; // a de-duplicating consumer drops it
                continue;
            }
            if self.rolled_back.contains(&key) {
                tally.phantoms.push(key.clone());
            } else if !self.committed.contains(&key) && !self.uncertain.contains(&key) {
                tally.unknown.push(key.clone());
            }
            // Order is judged on first arrivals: what a consumer that drops duplicates by id acts on.
            if let Some(previous) = last.insert(key.0.clone(), key.1)
                && key.1 < previous
            {
                tally.out_of_order.push((key.0.clone(), key.1, previous));
            }
        }
        tally.missing = self.committed.difference(&seen).cloned().collect();
        tally
    }
}

/// The accounting of one scenario.
#[derive(Debug, Default)]
pub struct Tally {
    pub written: usize,
    pub rolled_back: usize,
    pub delivered: usize,
    pub duplicates: usize,
    /// First arrivals that came after a later event of their aggregate: `(aggregate, seq, the seq before it)`.
    pub out_of_order: Vec<(String, u32, u32)>,
    /// Committed, never arrived.
    pub missing: Vec<Key>,
    /// Rolled back, arrived anyway.
    pub phantoms: Vec<Key>,
    /// Arrived, never written.
    pub unknown: Vec<Key>,
}

impl Tally {
    /// Writes the scenario's report row, then fails the test unless nothing was lost, nothing rolled back
    /// arrived, order held and the duplicates stay within `allowed` (the documented windows, counted by the
    /// scenario).
    pub fn check(&self, scenario: &str, injected: &str, allowed_duplicates: usize) {
        let mut problems = Vec::new();
        if self.written == 0 {
            problems.push("nothing was committed: the writers could not write".to_owned());
        }
        if !self.missing.is_empty() {
            problems.push(format!(
                "{} lost, e.g. {:?}",
                self.missing.len(),
                &self.missing[..1]
            ));
        }
        if !self.phantoms.is_empty() {
            problems.push(format!(
                "{} from rolled-back transactions",
                self.phantoms.len()
            ));
        }
        if !self.unknown.is_empty() {
            problems.push(format!("{} never written", self.unknown.len()));
        }
        if let Some((aggregate, seq, after)) = self.out_of_order.first() {
            problems.push(format!(
                "{} order violations, e.g. {aggregate}'s event {seq} first arrived after its event {after}",
                self.out_of_order.len()
            ));
        }
        if self.duplicates > allowed_duplicates {
            problems.push(format!(
                "{} duplicates, {allowed_duplicates} explained",
                self.duplicates
            ));
        }
        let result = if problems.is_empty() {
            "pass".to_owned()
        } else {
            format!("**FAIL**: {}", problems.join("; "))
        };
        let under = match outbox_tests::backend::suite_delivery() {
            Some(outbox::Delivery::Cursor) => " (whole suite under `OUTBOX_DELIVERY=cursor`)",
            _ => "",
        };
        record(&format!(
            "| {scenario}{under} | {injected} | {} | {} | {} | {} | {} | {result} |",
            self.written,
            self.rolled_back,
            self.delivered,
            self.duplicates,
            self.out_of_order.len()
        ));
        assert!(problems.is_empty(), "{scenario}: {}", problems.join("; "));
    }
}

/// Appends a row to the report (and echoes it to the test's output).
pub fn record(row: &str) {
    eprintln!("{row}");
    let path = std::env::var_os("RELIABILITY_REPORT").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/reliability-report.md"),
        PathBuf::from,
    );
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot write the report {}: {e}", path.display()));
    writeln!(file, "{row}").expect("the report is writable");
}

/// The long mode (`RELIABILITY_SOAK=1`).
pub fn soak() -> bool {
    std::env::var("RELIABILITY_SOAK").is_ok_and(|v| v == "1")
}

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// Scenarios take the machine for themselves: they restart shared servers and measure memory and time.
pub async fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().await
}

/// `AccountOpened` events `1..=per` on `aggregates` aggregates, committed in one transaction.
pub async fn committed(t: &TestDb, aggregates: u32, per: u32) -> (Ledger, Vec<(Key, uuid::Uuid)>) {
    let keys: Vec<Key> = (1..=per)
        .flat_map(|seq| (0..aggregates).map(move |a| (format!("agg-{a}"), seq)))
        .collect();
    let ids = t
        .outbox
        .add_events(
            &t.db,
            keys.iter().map(|(a, s)| EventEnvelope::new(opened(a, *s))),
        )
        .await
        .unwrap();
    let mut ledger = Ledger::default();
    ledger.committed.extend(keys.iter().cloned());
    (ledger, keys.into_iter().zip(ids).collect())
}
