use outbox::OutboxEvent;

#[derive(OutboxEvent)]
#[outbox(type = "com.example.user.created")]
struct UserCreated {
    #[outbox(aggregate_id)]
    user_id: u64,
}

fn main() {}
