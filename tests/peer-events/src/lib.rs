//! Event types that live in another crate than the code that decodes them.

use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

/// Registered from this crate; the registry must find it in the test binary that links this crate.
#[derive(Debug, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.peer.pinged", source = "/peer-service")]
pub struct PeerPinged {
    /// The peer.
    #[outbox(aggregate_id)]
    pub peer_id: u32,
    /// What it said.
    pub note: String,
}

/// A name the test binary can reference so the linker keeps this crate.
pub const CRATE: &str = env!("CARGO_PKG_NAME");
