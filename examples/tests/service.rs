//! The service example as a real process: HTTP in, events out on NATS, read back by the consumer example;
//! SIGTERM exits 0; SIGKILL mid-flow loses nothing after a restart; a bad variable stops it at start.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::Duration;

use async_nats::jetstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod browser;

const NATS: &str = "nats://127.0.0.1:4222";
const SUBJECT: &str = "com.example.user";

/// The example binaries Cargo built next to this test.
fn example(name: &str) -> PathBuf {
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    deps.parent().unwrap().join("examples").join(name)
}

struct Service {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Service {
    fn start(port: u16, db: &str, stream: &str) -> Self {
        Self::start_mode(port, db, stream, "all")
    }

    fn start_mode(port: u16, db: &str, stream: &str, mode: &str) -> Self {
        Self::start_with(port, db, stream, mode, &[])
    }

    fn start_with(port: u16, db: &str, stream: &str, mode: &str, env: &[(&str, &str)]) -> Self {
        let log = std::env::temp_dir().join(format!(
            "outbox-service-{port}-{}.log",
            uuid::Uuid::new_v4()
        ));
        let child = Command::new(example("service"))
            .args(["--mode", mode])
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", format!("sqlite://{db}?mode=rwc"))
            .env(
                "OUTBOX_BROKER",
                format!("{NATS}?stream={stream}&subjects={SUBJECT}"),
            )
            .env("OUTBOX_POLL_INTERVAL", "100ms")
            .env("LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap())
            .spawn()
            .expect("the service example is built by `cargo test --workspace`");
        Self { child, port, log }
    }

    async fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        self.request_with(method, path, body, "").await
    }

    /// A request with extra header lines (`Name: value\r\n` each).
    async fn request_with(
        &self,
        method: &str,
        path: &str,
        body: &str,
        headers: &str,
    ) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut stream = loop {
            match tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                Ok(stream) => break stream,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!(
                    "the service never listened ({e}); its log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
            }
        };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        (status, body)
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// SIGTERM once the service answers (a signal sent before it has installed its handler would kill it
    /// outright, which is not what an orchestrator's SIGTERM tests), then expect a clean exit.
    async fn stop(self, what: &str) {
        self.request("GET", "/metrics", "").await;
        self.signal("-TERM");
        let log = self.log.clone();
        let status = self.wait();
        assert!(
            status.success(),
            "{what}: {status:?}; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }

    fn wait(mut self) -> std::process::ExitStatus {
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("the service did not exit within 15 s");
    }
}

/// A directory of the test's own, and the service's SQLite file in it.
fn scratch() -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("outbox-service-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("service.db");
    (dir, db)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The service's subject can be captured by one stream only, so the tests that create one take turns.
static ONE_STREAM_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A stream of this test's own on the service's subject; another run's leftover on the same subject goes first.
async fn fresh_stream(js: &jetstream::Context) -> String {
    use futures_util::TryStreamExt;
    let names: Vec<String> = js.stream_names().try_collect().await.unwrap();
    for name in names {
        let Ok(mut stream) = js.get_stream(&name).await else {
            continue;
        };
        let captures = stream
            .info()
            .await
            .map(|i| i.config.subjects.iter().any(|s| s == SUBJECT))
            .unwrap_or(false);
        if captures {
            let _ = js.delete_stream(&name).await;
        }
    }
    format!("SVC{}", uuid::Uuid::new_v4().simple())
}

async fn stream_ids(js: &jetstream::Context, stream: &str) -> Vec<(String, String)> {
    let Ok(mut stream) = js.get_stream(stream).await else {
        return Vec::new();
    };
    let count = stream.info().await.unwrap().state.messages;
    let mut out = Vec::new();
    for seq in 1..=count {
        let m = stream.get_raw_message(seq).await.unwrap();
        let get = |n: &str| m.headers.get(n).map(|v| v.to_string()).unwrap_or_default();
        out.push((get("ce-id"), get("ce-type")));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_become_events_the_consumer_reads_and_sigterm_exits_cleanly() {
    let _turn = ONE_STREAM_AT_A_TIME.lock().await;
    let js = jetstream::new(
        async_nats::connect(NATS)
            .await
            .expect("NATS on 127.0.0.1:4222"),
    );
    let stream = fresh_stream(&js).await;
    let (dir, db) = scratch();
    let service = Service::start(free_port(), db.to_str().unwrap(), &stream);

    let (status, body) = service
        .request("POST", "/users", r#"{"email":"ada@example.com"}"#)
        .await;
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        service
            .request("POST", "/users", r#"{"email":"bob@example.com"}"#)
            .await
            .0,
        201
    );
    assert_eq!(
        service
            .request("DELETE", &format!("/users/{id}"), "")
            .await
            .0,
        204
    );
    assert_eq!(
        service
            .request("DELETE", &format!("/users/{id}"), "")
            .await
            .0,
        404
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let events = loop {
        let events = stream_ids(&js, &stream).await;
        if events.len() >= 3 || tokio::time::Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let types: Vec<&str> = events.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "com.example.user.created",
            "com.example.user.created",
            "com.example.user.deleted"
        ]
    );

    let (status, health) = service.request("GET", "/health", "").await;
    assert_eq!(status, 200, "{health}");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["relay"]["running"], true, "{health}");
    let (status, metrics) = service.request("GET", "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("outbox_events_published_total"),
        "{metrics}"
    );
    // The ops dashboard is mounted and shows the relay's health.
    let (status, ops) = service.request("GET", "/ops", "").await;
    assert_eq!(status, 200, "{ops}");
    assert!(ops.contains("<base href=\"/ops/\">"), "{ops}");
    assert!(ops.contains("&quot;running&quot;: true"), "{ops}");

    service
        .stop("SIGTERM: drain, finish the batch, exit 0")
        .await;

    // A redelivery from outside JetStream's de-duplication window: same event, no Nats-Msg-Id.
    let first = js
        .get_stream(&stream)
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    let mut headers = async_nats::HeaderMap::new();
    for (name, values) in first.headers.iter() {
        if name.to_string() != "Nats-Msg-Id" {
            for value in values {
                headers.append(name.to_string().as_str(), value.to_string().as_str());
            }
        }
    }
    js.publish_with_headers(SUBJECT, headers, first.payload.clone())
        .await
        .unwrap()
        .await
        .unwrap();

    // The consumer example decodes both types back through the registry, and drops the duplicate.
    let Output { status, stdout, .. } = Command::new(example("consumer"))
        .arg(format!("{NATS}?stream={stream}"))
        .output()
        .unwrap();
    assert!(status.success());
    let stdout = String::from_utf8_lossy(&stdout);
    assert!(
        stdout.contains("signed up with ada@example.com"),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("user {id} left")), "{stdout}");
    assert!(stdout.contains("already handled"), "{stdout}");
    assert!(stdout.contains("3 distinct events handled"), "{stdout}");

    js.delete_stream(&stream).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_bad_variable_stops_the_service_at_start_naming_it() {
    let output = Command::new(example("service"))
        .env("BIND_ADDR", "nowhere")
        .env("OUTBOX_BATCH_SIZE", "0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("BIND_ADDR=nowhere: expected host:port"),
        "{stderr}"
    );
    assert!(
        stderr.contains("OUTBOX_BATCH_SIZE=0: must be between 1 and 10000"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_flow_then_restart_loses_nothing() {
    let _turn = ONE_STREAM_AT_A_TIME.lock().await;
    let js = jetstream::new(async_nats::connect(NATS).await.unwrap());
    let stream = fresh_stream(&js).await;
    let (dir, db) = scratch();
    let port = free_port();
    let service = Service::start(port, db.to_str().unwrap(), &stream);
    let mut created = 0;
    for i in 0..40 {
        if service
            .request(
                "POST",
                "/users",
                &format!(r#"{{"email":"u{i}@example.com"}}"#),
            )
            .await
            .0
            == 201
        {
            created += 1;
        }
    }
    assert_eq!(created, 40);
    service.signal("-KILL"); // no drain, no release: whatever the relay held stays leased
    assert!(!service.wait().success());

    let restarted = Service::start(port, db.to_str().unwrap(), &stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let unique = loop {
        let ids: std::collections::HashSet<String> = stream_ids(&js, &stream)
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        if ids.len() >= 40 || tokio::time::Instant::now() > deadline {
            break ids.len();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        unique, 40,
        "every committed user's event arrives after the restart"
    );
    restarted.stop("the restarted service").await;
    js.delete_stream(&stream).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_relay_run_as_separate_processes() {
    let _turn = ONE_STREAM_AT_A_TIME.lock().await;
    let js = jetstream::new(async_nats::connect(NATS).await.unwrap());
    let stream = fresh_stream(&js).await;
    let (dir, db) = scratch();
    let api = Service::start_mode(free_port(), db.to_str().unwrap(), &stream, "api");
    assert_eq!(
        api.request("POST", "/users", r#"{"email":"solo@example.com"}"#)
            .await
            .0,
        201
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        stream_ids(&js, &stream).await.is_empty(),
        "an API-only process publishes nothing"
    );

    let relay = Service::start_mode(free_port(), db.to_str().unwrap(), &stream, "relay");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stream_ids(&js, &stream).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay process published nothing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An orchestrator can probe the relay-only process; it serves nothing else.
    let (status, body) = relay.request("GET", "/health", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""running":true"#), "{body}");
    let (status, body) = relay.request("GET", "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("outbox_events_published_total"), "{body}");
    assert_eq!(
        relay
            .request("POST", "/users", r#"{"email":"x@example.com"}"#)
            .await
            .0,
        404
    );
    api.stop("the API process").await;
    relay.stop("the relay process").await;
    js.delete_stream(&stream).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// What was reported: one request with a 300-character `x-request-id` answered 201, its event could not be
/// published, and every later event waited behind it. The service now refuses it with 400, and delivery goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlong_request_id_is_refused_and_delivery_goes_on() {
    let _turn = ONE_STREAM_AT_A_TIME.lock().await;
    let js = jetstream::new(async_nats::connect(NATS).await.unwrap());
    let stream = fresh_stream(&js).await;
    let (dir, db) = scratch();
    let service = Service::start(free_port(), db.to_str().unwrap(), &stream);
    let long = format!("x-request-id: {}\r\n", "r".repeat(300));
    let (status, body) = service
        .request_with("POST", "/users", r#"{"email":"long@example.com"}"#, &long)
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("x-request-id must be 1 to 255"), "{body}");
    for i in 0..5 {
        let (status, _) = service
            .request_with(
                "POST",
                "/users",
                &format!(r#"{{"email":"u{i}@example.com"}}"#),
                "x-request-id: req-ok\r\n",
            )
            .await;
        assert_eq!(status, 201);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stream_ids(&js, &stream).await.len() < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivery stopped: {} of 5 events published",
            stream_ids(&js, &stream).await.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    service.stop("the service").await;
    js.delete_stream(&stream).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A relay that stops on an error ends the process with a non-zero exit, so that an orchestrator restarts it,
/// rather than leaving it up, idle, answering requests whose events nobody publishes. Here the outbox table
/// lacks the columns the relay needs (as one created by hand, or by another tool, might).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_stops_on_an_error_stops_the_process() {
    let (dir, db) = scratch();
    let status = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('CREATE TABLE outbox_events \
             (id INTEGER PRIMARY KEY, status INTEGER, aggregate_type TEXT, aggregate_id TEXT, published_at TEXT)'); \
             c.commit()",
            db.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let service = Service::start_with(
        free_port(),
        db.to_str().unwrap(),
        "UNUSED",
        "all",
        &[("OUTBOX_BROKER", "memory://")],
    );
    let status = service.wait();
    assert_eq!(status.code(), Some(1), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `OUTBOX_ENABLE_HEALTH_CHECK=false` turns the health endpoint off; metrics stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_endpoint_follows_outbox_enable_health_check() {
    let (dir, db) = scratch();
    let service = Service::start_with(
        free_port(),
        db.to_str().unwrap(),
        "UNUSED",
        "api",
        &[
            ("OUTBOX_ENABLE_HEALTH_CHECK", "false"),
            ("OUTBOX_BROKER", "memory://"),
        ],
    );
    assert_eq!(service.request("GET", "/health", "").await.0, 404);
    assert_eq!(service.request("GET", "/metrics", "").await.0, 200);
    service.stop("the service").await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The contract is served, valid, and what each message's `dataschema` names: `/asyncapi.json` passes the
/// reference AsyncAPI parser, and the schema a published event points at is the one of its body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_point_at_the_schemas_the_service_serves() {
    let _turn = ONE_STREAM_AT_A_TIME.lock().await;
    let js = jetstream::new(
        async_nats::connect(NATS)
            .await
            .expect("NATS on 127.0.0.1:4222"),
    );
    let stream = fresh_stream(&js).await;
    let (dir, db) = scratch();
    let port = free_port();
    let service = Service::start(port, db.to_str().unwrap(), &stream);

    let (status, document) = service.request("GET", "/asyncapi.json", "").await;
    assert_eq!(status, 200, "{document}");
    let document: serde_json::Value = serde_json::from_str(&document).expect("JSON");
    assert_eq!(document["servers"]["broker"]["protocol"], "nats");
    assert_eq!(document["channels"]["com.example.user"]["address"], SUBJECT);
    let parser = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/asyncapi");
    assert!(
        parser.join("node_modules/@asyncapi/parser").is_dir(),
        "the AsyncAPI parser is not installed: run `npm ci --prefix tests/asyncapi` (`.ci/run` does)"
    );
    let file = dir.join("asyncapi.json");
    std::fs::write(&file, document.to_string()).unwrap();
    let parsed = Command::new("node")
        .arg(parser.join("validate.mjs"))
        .arg(&file)
        .output()
        .expect("node runs");
    assert!(
        parsed.status.success(),
        "{}{}",
        String::from_utf8_lossy(&parsed.stdout),
        String::from_utf8_lossy(&parsed.stderr)
    );

    let (status, _) = service
        .request("POST", "/users", r#"{"email":"ada@example.com"}"#)
        .await;
    assert_eq!(status, 201);
    let message = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut s) = js.get_stream(&stream).await
                && s.info().await.unwrap().state.messages > 0
            {
                break s.get_raw_message(1).await.unwrap();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nothing was published"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let dataschema = message.headers.get("ce-dataschema").map(|v| v.to_string());
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(
        dataschema.as_deref(),
        Some(format!("{base}/schemas/com.example.user.created/1.0").as_str())
    );
    let path = dataschema.unwrap().strip_prefix(&base).unwrap().to_owned();
    let (status, schema) = service.request("GET", &path, "").await;
    assert_eq!(status, 200, "{schema}");
    let schema: serde_json::Value = serde_json::from_str(&schema).unwrap();
    let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
    let mut required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut fields: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    required.sort_unstable();
    fields.sort_unstable();
    assert_eq!(required, fields, "the schema describes the body: {schema}");
    assert_eq!(
        service
            .request("GET", "/schemas/com.example.nothing/1.0", "")
            .await
            .0,
        404
    );

    service.stop("the service").await;
    let _ = js.delete_stream(&stream).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The service's own event, as the test writes it straight into the table.
#[derive(serde::Serialize, serde::Deserialize, outbox::OutboxEvent)]
#[outbox(type = "com.example.user.created", source = "/user-service")]
struct UserCreated {
    #[outbox(aggregate_id)]
    user_id: uuid::Uuid,
    email: String,
}

/// An operator opens the dashboard in a real browser, sees a dead letter, types the token and replays it; the
/// service's relay then delivers it. Set `SCREENSHOTS_DIR` to a folder (an absolute path) to keep the page as PNGs (the README's
/// screenshot comes from here).
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_replays_a_dead_letter_from_the_dashboard_in_a_browser() {
    use outbox::repository::{Failure, OutboxRepository};
    let dir = std::env::temp_dir().join(format!("outbox-ops-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let db_path = dir.join("service.db");
    let db_path = db_path.to_str().unwrap();
    let db = outbox::repository::connect(&format!("sqlite://{db_path}?mode=rwc"))
        .await
        .unwrap();
    outbox::migration::create_table(&db, "outbox_events")
        .await
        .unwrap();
    let outbox = OutboxRepository::new();
    outbox
        .add_event(
            &db,
            UserCreated {
                user_id: uuid::Uuid::new_v4(),
                email: "ada@example.com".into(),
            },
        )
        .await
        .unwrap();
    let claim = outbox.claim(&db, 1).await.unwrap();
    let failure =
        Failure::new(&claim.events[0], "the broker refused it: quota exceeded").permanent();
    outbox
        .mark_failed(&db, claim.token, &[failure])
        .await
        .unwrap();

    let port = free_port();
    let service = Service::start_with(
        port,
        db_path,
        "unused",
        "all",
        &[
            ("OUTBOX_BROKER", "memory://"),
            ("OUTBOX_OPS_TOKEN", "letmein"),
        ],
    );
    assert_eq!(service.request("GET", "/ops", "").await.0, 200);
    let browser = browser::Browser::start(free_port()).await;
    browser.open(&format!("http://127.0.0.1:{port}/ops")).await;
    let page = browser.source().await;
    assert!(
        page.contains("the broker refused it: quota exceeded"),
        "{page}"
    );
    assert!(page.contains("com.example.user.created"), "{page}");
    // The service's own relay is listed, alive (it records itself once it has started: reload until then).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !browser
        .source()
        .await
        .contains("<b id=\"alive\">1</b> alive, 0 gone")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the service's relay is not listed alive:\n{}",
            browser.source().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        browser.open(&format!("http://127.0.0.1:{port}/ops")).await;
    }
    let screenshots = std::env::var_os("SCREENSHOTS_DIR").map(PathBuf::from);
    if let Some(folder) = &screenshots {
        // A few of the chart's two-second polls first, so that it has a line to show.
        tokio::time::sleep(Duration::from_secs(7)).await;
        std::fs::write(folder.join("ops-dashboard.png"), browser.screenshot().await).unwrap();
    }

    // A wrong token is refused and changes nothing.
    browser
        .type_into("#dead-letters input[name=token]", "guess")
        .await;
    browser.click("#dead-letters button[value=replay]").await;
    browser.wait_for("wrong or missing token").await;
    assert_eq!(outbox.count_dead_letters(&db).await.unwrap(), 1);

    browser.open(&format!("http://127.0.0.1:{port}/ops")).await;
    browser
        .type_into("#dead-letters input[name=token]", "letmein")
        .await;
    browser.click("#dead-letters button[value=replay]").await;
    browser.wait_for("replayed 1 dead letter").await;
    // The relay publishes it: no dead letter, nothing pending.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while outbox.count_unpublished(&db).await.unwrap() > 0
        || outbox.count_dead_letters(&db).await.unwrap() > 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replayed event was not delivered within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser.open(&format!("http://127.0.0.1:{port}/ops")).await;
    browser.wait_for("<b id=\"dead\">0</b> dead letters").await;
    browser.quit().await;
    service.stop("the service").await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// What an OTLP/HTTP collector received: the request bodies posted to `/v1/traces` (protobuf).
async fn otlp_collector() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = bodies.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut chunk = [0u8; 8192];
                // Headers, then as many body bytes as Content-Length says.
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&chunk[..n]);
                    let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        if head.starts_with("post /v1/traces") {
                            kept.lock()
                                .unwrap()
                                .push(request[end + 4..end + 4 + length].to_vec());
                        }
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
                            .await;
                        request.clear();
                    }
                }
            });
        }
    });
    (port, bodies)
}

/// `OTEL_EXPORTER_OTLP_ENDPOINT` set: one trace runs from the caller's `traceparent` through the request's span
/// to the relay's publish of the event it stored, exported over OTLP/HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_and_the_publish_of_its_event_are_one_trace_exported_over_otlp() {
    let (collector, bodies) = otlp_collector().await;
    let (dir, db) = scratch();
    let endpoint = format!("http://127.0.0.1:{collector}");
    let service = Service::start_with(
        free_port(),
        db.to_str().unwrap(),
        "UNUSED",
        "all",
        &[
            ("OUTBOX_BROKER", "memory://"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "users-under-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let (status, body) = service
        .request_with(
            "POST",
            "/users",
            r#"{"email":"traced@example.com"}"#,
            "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n",
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // The relay publishes the event within its poll interval; stopping exports what is buffered.
    tokio::time::sleep(Duration::from_millis(800)).await;
    service.stop("the traced service").await;

    let exported = bodies.lock().unwrap().concat();
    let contains = |needle: &[u8]| exported.windows(needle.len()).any(|w| w == needle);
    assert!(contains(b"users-under-test"), "the service name");
    let spans: Vec<OtlpSpan> = bodies
        .lock()
        .unwrap()
        .iter()
        .flat_map(|body| otlp_spans(body))
        .collect();
    let named = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no span {name:?} among {spans:#?}"))
    };
    let request = named("POST /users");
    let publish = named("publish com.example.user");
    assert_eq!(hex(&request.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        hex(&request.parent_span_id),
        "00f067aa0ba902b7",
        "the caller's span"
    );
    assert_eq!(publish.trace_id, request.trace_id, "{spans:#?}");
    assert_eq!(
        publish.parent_span_id, request.span_id,
        "the event recorded the request's span, and the publish continues it"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A span as OTLP's protobuf carries it (the fields this test reads).
#[derive(Debug, Default)]
struct OtlpSpan {
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    name: String,
}

/// The spans of an `ExportTraceServiceRequest`: resource_spans (1) -> scope_spans (2) -> spans (2), each span's
/// trace_id (1), span_id (2), parent_span_id (4) and name (5). Enough protobuf to read them: varints, and
/// length-delimited fields; the others are skipped.
fn otlp_spans(body: &[u8]) -> Vec<OtlpSpan> {
    fn fields(mut bytes: &[u8]) -> Vec<(u64, &[u8])> {
        fn varint(bytes: &mut &[u8]) -> u64 {
            let mut value = 0;
            for shift in (0..64).step_by(7) {
                let byte = bytes[0];
                *bytes = &bytes[1..];
                value |= u64::from(byte & 0x7f) << shift;
                if byte < 0x80 {
                    break;
                }
            }
            value
        }
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let key = varint(&mut bytes);
            match key & 7 {
                0 => {
                    varint(&mut bytes);
                }
                1 => bytes = &bytes[8..],
                5 => bytes = &bytes[4..],
                2 => {
                    let len = usize::try_from(varint(&mut bytes)).unwrap();
                    out.push((key >> 3, &bytes[..len]));
                    bytes = &bytes[len..];
                }
                other => panic!("wire type {other} in an OTLP export"),
            }
        }
        out
    }
    let mut spans = Vec::new();
    for (_, resource) in fields(body).into_iter().filter(|(n, _)| *n == 1) {
        for (_, scope) in fields(resource).into_iter().filter(|(n, _)| *n == 2) {
            for (_, span) in fields(scope).into_iter().filter(|(n, _)| *n == 2) {
                let mut parsed = OtlpSpan::default();
                for (number, value) in fields(span) {
                    match number {
                        1 => parsed.trace_id = value.to_vec(),
                        2 => parsed.span_id = value.to_vec(),
                        4 => parsed.parent_span_id = value.to_vec(),
                        5 => parsed.name = String::from_utf8_lossy(value).into_owned(),
                        _ => {}
                    }
                }
                spans.push(parsed);
            }
        }
    }
    spans
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
