use outbox::publisher::from_url;

#[tokio::test]
async fn every_scheme_builds_its_publisher() {
    for (url, name) in [
        ("memory://", "memory"),
        ("stdout://", "stdout"),
        ("nats://127.0.0.1:4222", "nats"),
        ("nats://127.0.0.1:4222?connections=2", "nats"),
        (
            "amqp://guest:guest@127.0.0.1:5672/%2f?prefix=ce-",
            "rabbitmq",
        ),
        ("redis://127.0.0.1:6379?maxlen=1000", "redis"),
    ] {
        let publisher = from_url(url).await.unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(publisher.name(), name);
        publisher
            .check()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
    }
}

#[tokio::test]
async fn bad_urls_say_what_is_wrong() {
    for (url, expected) in [
        (
            "carrier-pigeon://coop",
            "unsupported scheme `carrier-pigeon`",
        ),
        (
            "memory://?encoding=xml",
            "encoding=xml: expected binary or structured",
        ),
        (
            "redis://127.0.0.1:6379?maxlen=lots",
            "maxlen=lots: expected a number",
        ),
        (
            "amqp://guest:guest@127.0.0.1:5672/%2f?prefix=x-",
            "prefix=x-: expected cloudEvents_ or ce-",
        ),
        ("nats://127.0.0.1:1", "cannot connect to nats"),
        (
            "nats://127.0.0.1:4222?connections=0",
            "connections=0: expected at least 1",
        ),
        (
            "nats://127.0.0.1:4222?connections=many",
            "connections=many: expected a number",
        ),
    ] {
        let err = from_url(url)
            .await
            .err()
            .unwrap_or_else(|| panic!("{url} should fail"));
        assert!(err.to_string().contains(expected), "{url}: {err}");
    }
}
