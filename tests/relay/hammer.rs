//! Four relays, 100 aggregates, writers committing while the relays run, a third of the writers rolling back,
//! 10% of publishes failing and 2% of acknowledgements lost: nothing lost, nothing from a rollback, order kept per
//! aggregate, and exactly one duplicate per lost acknowledgement (the documented window).

use outbox::publisher::InMemoryPublisher;
use outbox::relay::Relay;
use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::on_every_backend;
use outbox_tests::running::Running;

use crate::accounting::{account, drained, fast_config, write_rolling_back_every_third};

on_every_backend!(four_relays_random_failures_nothing_lost_order_kept);

async fn four_relays_random_failures_nothing_lost_order_kept(backend: Backend) {
    let t = TestDb::with_config(backend, fast_config()).await;
    let broker = InMemoryPublisher::new();
    broker.fail_fraction(0.10);
    broker.lose_acks(0.02);
    let relays: Vec<Running> = (0..4)
        .map(|_| {
            Running::start(Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone()).build())
        })
        .collect();

    let (committed, rolled_back) = write_rolling_back_every_third(&t).await;

    let expected = committed.len();
    // Done when everything arrived and everything is marked (a lost acknowledgement's redelivery may still be
    // due after its first delivery).
    drained(&t, &broker, expected).await;
    for relay in relays {
        relay.stop().await;
    }

    let totals = account(&broker, &committed);
    assert!(
        broker
            .messages()
            .iter()
            .all(|m| !rolled_back.contains(&m.message.id)),
        "an event of a rolled-back transaction was published"
    );
    assert_eq!(totals.unique, expected);
    assert_eq!(
        totals.duplicates as u64,
        broker.lost_acks(),
        "{backend:?}: every duplicate must come from a lost acknowledgement"
    );
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 0);
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 0);
    eprintln!(
        "{backend:?}: {totals:?}, {} publish attempts",
        broker.attempts()
    );
    t.drop_tables().await;
}
