//! Compile-time checks of `#[derive(OutboxEvent)]`: every bad declaration in `trybuild/fail` must fail with the
//! blessed error (`.stderr` beside it), every case in `trybuild/pass` must compile and run.
//!
//! The `.stderr` files depend on the compiler version, which `rust-toolchain.toml` pins. After a deliberate
//! change of a message, re-bless with `TRYBUILD=overwrite cargo test -p outbox-tests --test ui` and review the
//! diff.

#[test]
fn derive_ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("../trybuild/fail/*.rs");
    cases.pass("../trybuild/pass/*.rs");
}
