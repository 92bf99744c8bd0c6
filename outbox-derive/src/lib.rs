//! `#[derive(OutboxEvent)]`: use it through the `outbox` crate (`use outbox::OutboxEvent;`), which documents the
//! attributes on its `OutboxEvent` trait.

mod attr;
mod check;
mod ctxt;
mod expand;

use proc_macro::TokenStream;

/// Derives `outbox::OutboxEvent`: compile-time checked CloudEvents metadata and registration in the event
/// registry. See the `outbox::OutboxEvent` trait for the attributes.
#[proc_macro_derive(OutboxEvent, attributes(outbox))]
pub fn derive_outbox_event(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    expand::derive(&input).into()
}
