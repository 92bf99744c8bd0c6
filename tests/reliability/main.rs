//! The reliability suite: faults, crashes, bad input and load against real processes, databases and brokers.
//!
//! Every scenario ends with a full accounting of what writers committed (and rolled back) against what arrived,
//! and appends its row to `target/reliability-report.md` (`RELIABILITY_REPORT` picks another file): the table in
//! `RELIABILITY.md`. Scenarios run one at a time, each measuring on a quiet machine. `RELIABILITY_SOAK=1` is the
//! long mode: 20 kills instead of 3, 30 minutes of load instead of 60 s, more restart rounds.

mod bad_input;
mod broker_states;
mod brokers;
mod child;
mod clocks;
mod consumer;
mod crashes;
mod database;
mod frozen;
mod ledger;
mod load;
mod writers;
