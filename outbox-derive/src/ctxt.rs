//! Error accumulator: every problem of a declaration is reported in one compile, as serde_derive does.

use std::fmt::Display;

use quote::ToTokens;

/// Collects errors while a declaration is parsed and checked.
#[derive(Default)]
pub struct Ctxt {
    errors: Option<syn::Error>,
}

impl Ctxt {
    /// Records an error pointing at `tokens`.
    pub fn error_spanned_by(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.syn_error(syn::Error::new_spanned(tokens, message));
    }

    /// Records an error from syn.
    pub fn syn_error(&mut self, error: syn::Error) {
        match &mut self.errors {
            Some(errors) => errors.combine(error),
            None => self.errors = Some(error),
        }
    }

    /// All recorded errors combined, if any.
    pub fn check(self) -> Result<(), syn::Error> {
        self.errors.map_or(Ok(()), Err)
    }
}
