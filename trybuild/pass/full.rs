// Every attribute the derive takes, and what it generates.
use outbox::{EventEnvelope, OutboxEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.user.created", source = "/user-service", version = "2.1")]
pub struct UserCreated {
    #[outbox(aggregate_id)]
    pub user_id: Uuid,
    #[outbox(subject)]
    pub email: String,
}

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(
    type = "com.example.order.shipped",
    source = "https://example.com/orders",
    aggregate_type = "Order",
    dataschema = "https://example.com/schemas/order-shipped.json",
    extension(tenant = "eu", region2 = "west"),
    headers = "shipped_headers",
    data = shipped_body
)]
pub struct OrderShipped {
    #[outbox(aggregate_id)]
    pub order_id: u64,
    pub carrier: String,
}

fn shipped_headers(event: &OrderShipped) -> Vec<(String, String)> {
    vec![("x-carrier".to_owned(), event.carrier.clone())]
}

#[derive(Serialize)]
struct PublicShipment<'a> {
    order: u64,
    carrier: &'a str,
}

fn shipped_body(event: &OrderShipped) -> PublicShipment<'_> {
    PublicShipment { order: event.order_id, carrier: &event.carrier }
}

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.user.deleted", routing = "event_type")]
pub struct UserDeleted {
    #[outbox(aggregate_id)]
    pub user_id: String,
}

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "com.example.audit.logged", topic = "audit")]
pub struct AuditLogged {
    #[outbox(aggregate_id)]
    pub entry: i64,
}

mod reexported {
    pub use outbox as events;
}

#[derive(Debug, Serialize, Deserialize, reexported::events::OutboxEvent)]
#[outbox(crate = "reexported::events", type = "com.example.cart.emptied")]
pub struct CartEmptied {
    #[outbox(aggregate_id)]
    pub cart_id: u32,
}

fn main() {
    assert_eq!(UserCreated::DATA_VERSION, "2.1");
    assert_eq!(UserCreated::DESTINATION, "com.example.user");
    assert_eq!(OrderShipped::AGGREGATE_TYPE, "Order");
    assert_eq!(OrderShipped::DESTINATION, "Order");
    assert_eq!(OrderShipped::EXTENSIONS, &[("tenant", "eu"), ("region2", "west")]);
    assert_eq!(UserDeleted::DESTINATION, "com.example.user.deleted");
    assert_eq!(AuditLogged::DESTINATION, "audit");
    // Without `source`, the defining crate's name.
    assert_eq!(AuditLogged::SOURCE, concat!("/", env!("CARGO_PKG_NAME")));
    assert_eq!(CartEmptied::DATA_VERSION, "1.0");

    let user = EventEnvelope::new(UserCreated { user_id: Uuid::nil(), email: "a@example.com".into() });
    let message = user.to_message().unwrap();
    assert_eq!(message.subject.as_deref(), Some("a@example.com"));

    let shipped = EventEnvelope::new(OrderShipped { order_id: 9, carrier: "DHL".into() });
    let message = shipped.to_message().unwrap();
    assert_eq!(message.data.get(), r#"{"order":9,"carrier":"DHL"}"#);
    assert_eq!(message.headers, vec![("x-carrier".to_owned(), "DHL".to_owned())]);
    assert_eq!(message.dataschema.as_deref(), Some("https://example.com/schemas/order-shipped.json"));

    // Matching on the type string with the generated constants.
    let kind = match message.event_type.as_str() {
        UserCreated::EVENT_TYPE => "user",
        OrderShipped::EVENT_TYPE => "order",
        _ => "other",
    };
    assert_eq!(kind, "order");
}
