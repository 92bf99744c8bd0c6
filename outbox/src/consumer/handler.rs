//! Typed handlers: one per event type, called with the decoded event and the transaction it applies in.

use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use sea_orm::DatabaseTransaction;

use super::delivery::Delivery;
use crate::event::{DynEvent, OutboxEvent};

/// What a handler's failure carries: any error; its message becomes the dead letter's reason.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// What a handler gets beside its event: the transaction to apply it in (the inbox record is already in it, and
/// the consumer commits it when the handler returns `Ok`), and the message's metadata.
pub struct Context {
    pub(super) txn: Arc<DatabaseTransaction>,
    pub(super) delivery: Arc<Delivery>,
    pub(super) attempt: u32,
}

impl Context {
    /// The transaction to apply the event in. Do not commit it: the consumer does, after the handler returns.
    pub fn txn(&self) -> &DatabaseTransaction {
        &self.txn
    }

    /// The message's CloudEvents metadata: id, source, time, correlation, causation, aggregate, trace context.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// Which attempt this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// A handler with its event type erased, as the consumer keeps it.
pub(super) type ErasedHandler = Arc<
    dyn Fn(Box<dyn DynEvent>, Context) -> BoxFuture<'static, Result<(), HandlerError>>
        + Send
        + Sync,
>;

/// Erases `handler`'s event type: the consumer only calls it with a `Box<dyn DynEvent>` of type `E`, decoded by
/// the registry under `E`'s type and version.
pub(super) fn erase<E, F, Fut>(handler: F) -> ErasedHandler
where
    E: OutboxEvent,
    F: Fn(E, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    Arc::new(move |event, context| match event.downcast::<E>() {
        Ok(event) => Box::pin(handler(*event, context)),
        Err(other) => {
            let message = format!(
                "the registry decoded `{}` into another Rust type than the handler's `{}`",
                other.meta().event_type,
                std::any::type_name::<E>()
            );
            Box::pin(async move { Err(message.into()) })
        }
    })
}
