//! The quickstart: declare events, record them with their metadata, see the CloudEvents they become, and turn a
//! stored row back into its Rust type through the registry. Runs in a second, no server needed.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use outbox::cloudevents::{self, BinaryMode};
use outbox::{EventEnvelope, OutboxEvent, Registry};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A plain domain struct; the derive checks the declaration at compile time and registers the type.
#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(
    type = "com.example.user.created",
    source = "/user-service",
    version = "1.0"
)]
pub struct UserCreated {
    #[outbox(aggregate_id)]
    pub user_id: Uuid,
    pub email: String,
}

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.user.deleted", source = "/user-service")]
pub struct UserDeleted {
    #[outbox(aggregate_id)]
    pub user_id: Uuid,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // What the relay checks and logs at start: every event type this program can decode.
    let registry = Registry::global();
    registry.validate()?;
    println!("registered event types:");
    for info in registry.entries() {
        println!(
            "  {} v{} -> {} (destination {})",
            info.meta.event_type, info.meta.data_version, info.rust_type, info.meta.destination
        );
    }

    // Record two events of one aggregate. The second is caused by the first and shares its correlation id.
    let user_id = Uuid::now_v7();
    let created = EventEnvelope::new(UserCreated {
        user_id,
        email: "ada@example.com".into(),
    })
    .with_correlation_id("signup-request-1");
    let deleted = EventEnvelope::new(UserDeleted { user_id }).caused_by(&created);

    // Both go to one destination, keyed by the aggregate id, so a consumer sees them in order.
    println!("\nstructured CloudEvents (application/cloudevents+json), one per line:");
    for message in [created.to_message()?, deleted.to_message()?] {
        println!(
            "{}",
            String::from_utf8(cloudevents::to_structured(&message))?
        );
    }

    // Binary mode, the default on brokers: body = data as JSON, attributes as headers (here Kafka's).
    let message = created.to_message()?;
    println!(
        "\nKafka binary mode: topic {}, key {}",
        message.destination, message.key
    );
    for (name, value) in BinaryMode::KAFKA.headers(&message) {
        println!("  {name}: {value}");
    }
    println!("  body: {}", message.data.get());

    // A stored row (event type, data version, JSON) decodes back into its Rust type with no hand-kept map.
    let stored = created.event().to_json()?;
    let decoded = registry.decode(
        UserCreated::EVENT_TYPE,
        UserCreated::DATA_VERSION,
        stored.get(),
    )?;
    let user = decoded
        .downcast_ref::<UserCreated>()
        .ok_or("decoded into another type")?;
    println!("\ndecoded a stored row back into UserCreated: {user:?}");

    // A row nobody can decode is a clear error, not a panic.
    let unknown = registry.decode("com.example.user.renamed", "1.0", "{}");
    println!(
        "unknown type: {}",
        unknown.err().ok_or("unexpectedly decoded")?
    );
    Ok(())
}
