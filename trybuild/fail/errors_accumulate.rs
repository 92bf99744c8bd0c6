// Every problem of one declaration is reported in one compile, and the constants of the failed type stay
// usable: no follow-on errors about missing items.
use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox(type = "", source = "not a uri", version = "1", unknown = true)]
struct UserCreated {
    user_id: u64,
}

fn main() {
    let _ = UserCreated::EVENT_TYPE;
    let _ = UserCreated { user_id: 1 }.aggregate_id();
}
