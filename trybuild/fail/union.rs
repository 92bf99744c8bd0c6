use outbox::OutboxEvent;

#[derive(OutboxEvent)]
#[outbox(type = "com.example.bits.flipped")]
union Bits {
    int: u32,
    float: f32,
}

fn main() {}
