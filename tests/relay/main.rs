//! The relay against real databases and the in-memory publisher: load with random failures and several relays,
//! crashes (a task aborted, a process killed with SIGKILL), a broker outage, poison events, shutdown, wake-ups,
//! health and metrics. Every scenario ends with an accounting of what was written against what arrived.

mod accounting;
mod ahead;
mod consumer;
mod cursor;
mod dataschema;
mod faults;
mod hammer;
mod health;
mod lifecycle;
mod otel;
mod pipeline;
mod wakeups;
