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

/// An event with a transport header of the caller's choosing, and a note of any size: for the limits on what a
/// broker can carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.account.tagged", source = "/accounts", headers = tag_header)]
pub struct AccountTagged {
    #[outbox(aggregate_id)]
    pub account: String,
    pub header: String,
    pub value: String,
    pub note: String,
}

fn tag_header(event: &AccountTagged) -> Vec<(String, String)> {
    vec![(event.header.clone(), event.value.clone())]
}

/// An `AccountTagged` with a harmless header and an empty note.
pub fn tagged(account: &str) -> AccountTagged {
    AccountTagged {
        account: account.to_owned(),
        header: "x-tenant".to_owned(),
        value: "acme".to_owned(),
        note: String::new(),
    }
}
