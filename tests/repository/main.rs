//! The repository's contract, checked on every backend by one suite: each test below runs on PostgreSQL,
//! MariaDB, an SQLite file and SQLite in memory, each in tables of its own so tests run in parallel.
//!
//! The servers are the machine's (127.0.0.1:5432 database `test`, 127.0.0.1:3306 database `test`); set
//! `TEST_POSTGRES_URL` or `TEST_MYSQL_URL` to use others.

mod cdc;
mod change;
mod claim_lock;
mod contract;
mod inbox;
mod limits;
mod ops;
mod setup;
mod stragglers;
