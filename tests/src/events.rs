//! Event types shared by the test binaries.

use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.account.opened", source = "/accounts")]
pub struct AccountOpened {
    #[outbox(aggregate_id)]
    pub account: String,
    pub seq: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.account.closed", source = "/accounts")]
pub struct AccountClosed {
    #[outbox(aggregate_id)]
    pub account: String,
    pub reason: String,
}

pub fn opened(account: &str, seq: u32) -> AccountOpened {
    AccountOpened {
        account: account.to_owned(),
        seq,
    }
}
