//! `RelayBuilder::dataschema_base`: messages of a type with an exported schema name it in `dataschema`; other
//! types, and a type that declares its own `dataschema`, are left as they are.

use std::time::Duration;

use outbox::OutboxEvent;
use outbox::publisher::InMemoryPublisher;
use outbox::relay::Relay;
use outbox::schemars::JsonSchema;
use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::opened;
use outbox_tests::running::Running;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, JsonSchema, OutboxEvent)]
#[schemars(crate = "outbox::schemars")]
#[outbox(
    type = "com.example.account.renamed",
    source = "/accounts",
    version = "2.1",
    schema
)]
struct AccountRenamed {
    #[outbox(aggregate_id)]
    account: String,
    name: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema, OutboxEvent)]
#[schemars(crate = "outbox::schemars")]
#[outbox(
    type = "com.example.account.frozen",
    source = "/accounts",
    dataschema = "https://schemas.example.com/frozen.json",
    schema
)]
struct AccountFrozen {
    #[outbox(aggregate_id)]
    account: String,
}

#[tokio::test]
async fn the_relay_names_the_schema_of_each_type_that_exports_one() {
    let t = TestDb::new(Backend::SqliteMemory).await;
    t.outbox
        .add_event(&t.db, opened("a", 1))
        .await
        .expect("stored");
    let renamed = AccountRenamed {
        account: "a".into(),
        name: "Ada".into(),
    };
    t.outbox.add_event(&t.db, renamed).await.expect("stored");
    t.outbox
        .add_event(
            &t.db,
            AccountFrozen {
                account: "a".into(),
            },
        )
        .await
        .expect("stored");

    let broker = InMemoryPublisher::new();
    let relay = Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone())
        .dataschema_base("https://example.com/schemas/")
        .build();
    let running = Running::start(relay);
    assert!(broker.wait_for(3, Duration::from_secs(10)).await);
    running.stop().await;

    let dataschemas: Vec<(String, Option<String>)> = broker
        .messages()
        .into_iter()
        .map(|m| (m.message.event_type, m.message.dataschema))
        .collect();
    assert_eq!(
        dataschemas,
        [
            ("com.example.account.opened".to_owned(), None),
            (
                "com.example.account.renamed".to_owned(),
                Some("https://example.com/schemas/com.example.account.renamed/2.1".to_owned())
            ),
            (
                "com.example.account.frozen".to_owned(),
                Some("https://schemas.example.com/frozen.json".to_owned())
            ),
        ]
    );
    let headers = &broker.messages()[1].headers;
    assert!(
        headers.iter().any(|(name, value)| name == "ce-dataschema"
            && value == "https://example.com/schemas/com.example.account.renamed/2.1"),
        "{headers:?}"
    );
}
