//! The `outbox` command; everything is in the library, so a service can build the same command with its own
//! event types linked in (see `outbox_cli::main`).

fn main() -> std::process::ExitCode {
    outbox_cli::main()
}
