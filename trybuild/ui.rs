//! Compile-time checks of `#[derive(OutboxEvent)]`: every bad declaration in `fail/` must fail with the blessed
//! error (`.stderr` beside it), every case in `pass/` must compile and run.
//!
//! The `.stderr` files depend on the compiler version, which `rust-toolchain.toml` pins. After a deliberate
//! change of a message, re-bless with `TRYBUILD=overwrite cargo test -p outbox-ui-tests` and review the
//! diff.

#[test]
fn derive_ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("fail/*.rs");
    cases.pass("pass/*.rs");
}
