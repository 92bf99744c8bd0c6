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

/// A typed handler of events of type `E`: any `Fn(E, Context) -> impl Future<Output = Result<(), HandlerError>>`,
/// an `async fn` or a closure. A trait of its own so that a function of another shape is one error that says what
/// shape is expected.
#[diagnostic::on_unimplemented(
    message = "this is not a handler of `{E}` events",
    label = "expected `async fn(event: {E}, ctx: Context) -> Result<(), HandlerError>`, or a closure of that shape",
    note = "a handler takes the event by value and the `outbox::consumer::Context`, and returns a `Send` future of \
            `Result<(), HandlerError>`"
)]
pub trait Handler<E>: Send + Sync + 'static {
    /// Runs the handler.
    fn call(&self, event: E, context: Context) -> BoxFuture<'static, Result<(), HandlerError>>;
}

impl<E, F, Fut> Handler<E> for F
where
    F: Fn(E, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn call(&self, event: E, context: Context) -> BoxFuture<'static, Result<(), HandlerError>> {
        Box::pin(self(event, context))
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
pub(super) fn erase<E: OutboxEvent>(handler: impl Handler<E>) -> ErasedHandler {
    Arc::new(move |event, context| match event.downcast::<E>() {
        Ok(event) => handler.call(*event, context),
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
