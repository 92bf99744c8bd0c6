//! The README's first command, run as a user runs it: the demo stores events with a domain change, a rolled-back
//! transaction leaves none, and the relay empties the outbox onto stdout as CloudEvents, in order.

use std::process::Command;

#[test]
fn the_demo_publishes_every_committed_event_and_nothing_rolled_back() {
    let output = Command::new(env!("CARGO_BIN_EXE_quickstart"))
        .output()
        .expect("the quickstart runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("after one rolled-back signup: 0 users, 2 pending events"),
        "{stdout}"
    );
    let events: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("{\"specversion\":\"1.0\""))
        .collect();
    assert_eq!(events.len(), 2, "{stdout}");
    assert!(
        events[0].contains("\"type\":\"com.example.user.created\""),
        "{stdout}"
    );
    assert!(
        events[1].contains("\"type\":\"com.example.user.deleted\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("summary: 2 published, 0 pending, 0 dead letters"),
        "{stdout}"
    );
}
