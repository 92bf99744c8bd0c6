//! The reliability suite: faults, crashes, bad input and load against real processes, databases and brokers.
//!
//! Every scenario ends with a full accounting of what writers committed (and rolled back) against what arrived,
//! and appends its row to `target/reliability-report.md` (`RELIABILITY_REPORT` picks another file): the table in
//! `RELIABILITY.md`. Scenarios run one at a time, each measuring on a quiet machine. `RELIABILITY_SOAK=1` is the
//! long mode: 20 kills instead of 3, 30 minutes of load instead of 60 s, more restart rounds.

mod bad_input;
mod broker_states;
mod brokers;
mod child;
mod clocks;
mod consumer;
mod crashes;
mod database;
mod frozen;
mod ledger;
mod load;
mod writers;

/// The whole suite again with every relay under the commit-order cursor (`OUTBOX_DELIVERY=cursor`, 8
/// partitions): this binary run as a child with `TEST_DELIVERY=cursor`, while this test holds the suite's turn, so
/// no scenario of this run shares the machine or a broker with it. Each scenario there keeps its own accounting
/// and report row; a failure shows the child's output.
#[tokio::test]
async fn the_whole_suite_holds_under_the_commit_order_cursor() {
    if outbox_tests::backend::suite_delivery().is_some() {
        return; // the child run itself
    }
    let _serial = ledger::serial().await;
    let output = tokio::task::spawn_blocking(|| {
        std::process::Command::new(std::env::current_exe().expect("this test binary"))
            .env("TEST_DELIVERY", "cursor")
            .args([
                "--skip",
                "the_whole_suite_holds_under_the_commit_order_cursor",
            ])
            .output()
    })
    .await
    .expect("the child run's task")
    .expect("run the suite under the cursor");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary = stdout
        .lines()
        .find(|line| line.starts_with("test result:"))
        .unwrap_or("no summary");
    eprintln!("under the cursor: {summary}");
    assert!(
        output.status.success() && summary.contains(" 0 failed"),
        "the suite failed under the commit-order cursor: {summary}\n{stdout}\n{stderr}"
    );
    assert!(
        !summary.contains(" 0 passed"),
        "the child run ran no scenario: {summary}\n{stdout}"
    );
}
