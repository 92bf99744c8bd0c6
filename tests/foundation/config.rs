use std::time::Duration;

use outbox::OutboxConfig;
use outbox::config::ConfigLoader;

#[test]
fn defaults_are_python_outbox_cores() {
    let config = OutboxConfig::from_vars(std::iter::empty::<(&str, &str)>()).unwrap();
    assert_eq!(config, OutboxConfig::default());
    assert_eq!(config.batch_size, 100);
    assert_eq!(config.poll_interval, Duration::from_secs(5));
    assert_eq!(config.max_retry_count, 3);
    assert_eq!(config.retry_backoff_multiplier, 2.0);
    assert!(config.enable_metrics);
    assert!(config.enable_health_check);
    assert_eq!(config.max_payload_bytes, 1 << 20);
    assert!(config.validate().is_ok());
}

#[test]
fn every_python_outbox_core_variable_is_read() {
    let config = OutboxConfig::from_vars([
        ("OUTBOX_BATCH_SIZE", "1000"),
        ("OUTBOX_POLL_INTERVAL_SECONDS", "1.5"),
        ("OUTBOX_MAX_RETRY_COUNT", "0"),
        ("OUTBOX_RETRY_BACKOFF_MULTIPLIER", "10"),
        ("OUTBOX_ENABLE_METRICS", "false"),
        ("OUTBOX_ENABLE_HEALTH_CHECK", "0"),
        ("OUTBOX_RETRY_INITIAL_DELAY", "250ms"),
        ("OUTBOX_RETRY_MAX_DELAY", "1m 30s"),
        ("OUTBOX_MAX_PAYLOAD_BYTES", "65536"),
        ("PATH", "/usr/bin"),
    ])
    .unwrap();
    assert_eq!(config.batch_size, 1000);
    assert_eq!(config.poll_interval, Duration::from_millis(1500));
    assert_eq!(config.max_retry_count, 0);
    assert_eq!(config.retry_backoff_multiplier, 10.0);
    assert!(!config.enable_metrics);
    assert!(!config.enable_health_check);
    assert_eq!(config.retry_initial_delay, Duration::from_millis(250));
    assert_eq!(config.retry_max_delay, Duration::from_secs(90));
    assert_eq!(config.max_payload_bytes, 65536);
}

#[test]
fn durations_take_units_and_bare_numbers_are_seconds() {
    for (value, expected) in [
        ("250ms", 250),
        ("2s", 2000),
        ("1m", 60_000),
        ("3", 3000),
        ("0.5", 500),
    ] {
        let config = OutboxConfig::from_vars([("OUTBOX_POLL_INTERVAL", value)]).unwrap();
        assert_eq!(
            config.poll_interval,
            Duration::from_millis(expected),
            "{value}"
        );
    }
}

#[test]
fn a_bad_value_names_the_variable_the_value_and_the_range() {
    let cases = [
        (
            "OUTBOX_BATCH_SIZE",
            "0",
            "OUTBOX_BATCH_SIZE=0: must be between 1 and 10000",
        ),
        (
            "OUTBOX_BATCH_SIZE",
            "10001",
            "OUTBOX_BATCH_SIZE=10001: must be between 1 and 10000",
        ),
        (
            "OUTBOX_BATCH_SIZE",
            "ten",
            "OUTBOX_BATCH_SIZE=ten: must be a whole number",
        ),
        (
            "OUTBOX_BATCH_SIZE",
            "-1",
            "OUTBOX_BATCH_SIZE=-1: must be a whole number",
        ),
        (
            "OUTBOX_POLL_INTERVAL_SECONDS",
            "0",
            "OUTBOX_POLL_INTERVAL_SECONDS=0: must be between 1 and 3600",
        ),
        (
            "OUTBOX_POLL_INTERVAL_SECONDS",
            "3601",
            "OUTBOX_POLL_INTERVAL_SECONDS=3601: must be between 1 and 3600",
        ),
        (
            "OUTBOX_POLL_INTERVAL",
            "2h",
            "OUTBOX_POLL_INTERVAL=2h: must be between 1ms and 1h",
        ),
        (
            "OUTBOX_POLL_INTERVAL",
            "soon",
            "OUTBOX_POLL_INTERVAL=soon: must be a duration such as 250ms, 5s or 1m",
        ),
        (
            "OUTBOX_MAX_RETRY_COUNT",
            "101",
            "OUTBOX_MAX_RETRY_COUNT=101: must be between 0 and 100",
        ),
        (
            "OUTBOX_RETRY_BACKOFF_MULTIPLIER",
            "0.5",
            "OUTBOX_RETRY_BACKOFF_MULTIPLIER=0.5: must be between 1 and 10",
        ),
        (
            "OUTBOX_RETRY_BACKOFF_MULTIPLIER",
            "NaN",
            "OUTBOX_RETRY_BACKOFF_MULTIPLIER=NaN: must be between 1 and 10",
        ),
        (
            "OUTBOX_ENABLE_METRICS",
            "maybe",
            "OUTBOX_ENABLE_METRICS=maybe: must be true or false",
        ),
        (
            "OUTBOX_RETRY_MAX_DELAY",
            "100ms",
            "OUTBOX_RETRY_MAX_DELAY=100ms: must be between 1s and 1day",
        ),
        (
            "OUTBOX_MAX_PAYLOAD_BYTES",
            "512",
            "OUTBOX_MAX_PAYLOAD_BYTES=512: must be between 1024 and 268435456",
        ),
        (
            "OUTBOX_MAX_PAYLOAD_BYTES",
            "1MiB",
            "OUTBOX_MAX_PAYLOAD_BYTES=1MiB: must be a whole number of bytes",
        ),
    ];
    for (var, value, expected) in cases {
        let err = OutboxConfig::from_vars([(var, value)]).unwrap_err();
        assert_eq!(err.to_string(), expected, "{var}={value}");
        assert_eq!(err.problems.len(), 1);
        assert_eq!(err.problems[0].variable, var);
    }
}

#[test]
fn control_characters_in_a_bad_value_are_escaped_in_the_message() {
    let err = OutboxConfig::from_vars([("OUTBOX_BATCH_SIZE", "1\nOUTBOX_FAKE=1")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "OUTBOX_BATCH_SIZE=1\\nOUTBOX_FAKE=1: must be a whole number"
    );
}

#[test]
fn unknown_variables_are_reported_with_the_closest_name() {
    let err = OutboxConfig::from_vars([("OUTBOX_BATCH_SIZ", "10")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "OUTBOX_BATCH_SIZ: unknown setting; did you mean OUTBOX_BATCH_SIZE?"
    );
    let err = OutboxConfig::from_vars([("OUTBOX_COLOUR", "blue")]).unwrap_err();
    assert!(err.to_string().contains("unknown setting"), "{err}");
}

#[test]
fn an_unknown_variable_is_named_without_its_value() {
    // A misspelt application variable may hold a secret: the error names the variable only.
    let secret = "amqp://user:s3cret@rabbit:5672/%2f";
    let err = OutboxConfig::from_vars([("OUTBOX_BROKER_URL", secret)]).unwrap_err();
    assert_eq!(err.problems[0].value, None);
    assert!(!err.to_string().contains("s3cret"), "{err}");
    assert!(!format!("{err:?}").contains("s3cret"), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("OUTBOX_BROKER_URL: unknown setting"),
        "{err}"
    );
}

#[test]
fn application_variables_can_be_allowed() {
    let loader = ConfigLoader::new().allow("OUTBOX_BROKER");
    let config = loader
        .from_vars([
            ("OUTBOX_BROKER", "memory://"),
            ("OUTBOX_MAX_RETRY_COUNT", "5"),
        ])
        .unwrap();
    assert_eq!(config.max_retry_count, 5);
    // A typo of an allowed variable is still caught, and suggested.
    let err = loader
        .from_vars([("OUTBOX_BROKR", "memory://")])
        .unwrap_err();
    assert!(
        err.to_string().contains("did you mean OUTBOX_BROKER?"),
        "{err}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let err = OutboxConfig::from_vars([
        ("OUTBOX_BATCH_SIZE", "0"),
        ("OUTBOX_MAX_RETRY_COUNT", "x"),
        ("OUTBOX_TYPO", "1"),
    ])
    .unwrap_err();
    let vars: Vec<&str> = err.problems.iter().map(|p| p.variable.as_str()).collect();
    assert_eq!(vars.len(), 3, "{err}");
    for var in ["OUTBOX_BATCH_SIZE", "OUTBOX_MAX_RETRY_COUNT", "OUTBOX_TYPO"] {
        assert!(vars.contains(&var), "{var} missing in {err}");
    }
    assert_eq!(err.to_string().lines().count(), 3);
}

#[test]
fn both_poll_interval_forms_at_once_is_an_error() {
    let err = OutboxConfig::from_vars([
        ("OUTBOX_POLL_INTERVAL", "1s"),
        ("OUTBOX_POLL_INTERVAL_SECONDS", "2"),
    ])
    .unwrap_err();
    assert!(err.to_string().contains("set only one of them"), "{err}");
}

#[test]
fn validate_checks_a_config_built_in_code() {
    let mut config = OutboxConfig::default();
    config.batch_size = 0;
    config.retry_backoff_multiplier = 11.0;
    let err = config.validate().unwrap_err();
    assert_eq!(err.problems.len(), 2, "{err}");
    assert!(err.to_string().contains("OUTBOX_BATCH_SIZE=0"), "{err}");
}

#[test]
fn retry_delay_grows_by_the_multiplier_up_to_the_cap() {
    let mut config = OutboxConfig::default();
    config.retry_initial_delay = Duration::from_millis(100);
    config.retry_backoff_multiplier = 3.0;
    config.retry_max_delay = Duration::from_secs(2);
    let delays: Vec<u128> = (1..=5).map(|a| config.retry_delay(a).as_millis()).collect();
    assert_eq!(delays, [100, 300, 900, 2000, 2000]);
    assert_eq!(config.retry_delay(0), Duration::from_millis(100));
    assert_eq!(config.retry_delay(u32::MAX), Duration::from_secs(2));
}

#[test]
fn from_env_reads_the_process_environment() {
    // Setting variables in this process would race with other tests that spawn processes (which read the
    // environment), so the check runs in a child: this test binary, running only the ignored test below.
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "config::from_env_in_child",
            "--nocapture",
        ])
        .env("OUTBOX_BATCH_SIZE", "321")
        .env("OUTBOX_ENABLE_METRICS", "off")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("batch_size=321 enable_metrics=false"),
        "{stdout}"
    );
}

#[test]
#[ignore = "run by from_env_reads_the_process_environment in a child process"]
fn from_env_in_child() {
    let config = OutboxConfig::from_env().unwrap();
    println!(
        "batch_size={} enable_metrics={}",
        config.batch_size, config.enable_metrics
    );
}

#[test]
fn delivery_and_partitions_are_read_and_checked() {
    let config =
        OutboxConfig::from_vars([("OUTBOX_DELIVERY", "Cursor"), ("OUTBOX_PARTITIONS", "16")])
            .unwrap();
    assert_eq!(config.delivery, outbox::Delivery::Cursor);
    assert_eq!(config.partitions, 16);
    assert_eq!(OutboxConfig::default().delivery, outbox::Delivery::Rows);
    assert_eq!(OutboxConfig::default().partitions, 8);
    let err = OutboxConfig::from_vars([("OUTBOX_DELIVERY", "log"), ("OUTBOX_PARTITIONS", "0")])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "OUTBOX_DELIVERY=log: must be rows or cursor\nOUTBOX_PARTITIONS=0: must be between 1 and 1024"
    );
    let err = OutboxConfig::from_vars([
        ("OUTBOX_DELIVERY", "cursor"),
        ("OUTBOX_DELETE_ON_PUBLISH", "true"),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with(
            "OUTBOX_DELETE_ON_PUBLISH=true: cannot be used with OUTBOX_DELIVERY=cursor"
        ),
        "{err}"
    );
}
