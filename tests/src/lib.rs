//! Helpers shared by the integration test binaries.

pub mod backend;
pub mod events;
pub mod kafka;
pub mod prefixed;
pub mod redis;
pub mod running;
pub mod servers;

use std::path::PathBuf;
use std::process::Command;

/// Runs `program` with `args` to completion, failing the test unless it succeeds.
pub fn run_command(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(status.success(), "{program} {}: {status}", args.join(" "));
}

/// The Python interpreter the interop tests use: `$PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Runs `tests/python/<script>` with `args` (and `input` as JSON on stdin, if given) and returns its stdout
/// parsed as JSON.
///
/// A missing interpreter or package is a test failure that says how to install it, never a silent skip:
/// `.ci/run` installs what these scripts need.
pub fn run_python(
    script: &str,
    args: &[&str],
    input: Option<&serde_json::Value>,
) -> serde_json::Value {
    use std::io::Write;
    use std::process::Stdio;
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script);
    let mut child = Command::new(python())
        .arg(&path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {} for {}: {e}", python(), path.display()));
    let mut stdin = child.stdin.take().expect("stdin is piped");
    if let Some(input) = input {
        stdin
            .write_all(input.to_string().as_bytes())
            .expect("write to python");
    }
    drop(stdin);
    let output = child.wait_with_output().expect("python runs");
    assert!(
        output.status.success(),
        "{script} failed (install the test requirements with `pip install -r tests/python/requirements.txt`):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{script} printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}
