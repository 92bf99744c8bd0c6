//! The consumer side: reading what the relay published back into the service on the other end.
//!
//! - [`Delivery`]: a received message as a CloudEvent, from the headers of any binding (binary mode) or its body
//!   (structured mode), decoded into its Rust type through the [registry](crate::registry).
//! - [`Inbox`](crate::repository::Inbox) (feature `sea-orm`): the record of what a consumer has applied,
//!   written in the handler's own transaction, so a redelivered message is applied once.

mod delivery;

pub use delivery::{Delivery, DeliveryError};
