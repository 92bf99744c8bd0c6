//! Event model, registry, CloudEvents rendering and config: everything below the database.

mod cloudevents;
mod config;
mod contract;
mod delivery;
mod envelope;
mod events;
mod registry;
