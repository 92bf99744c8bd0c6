//! The ops dashboard (`outbox::ops`), nested under `/ops` as a service mounts it: what its pages show, and that
//! replay and purge need the token.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use outbox::ops::Dashboard;
use tower::ServiceExt;

use outbox_tests::backend::{Backend, TestDb};
use outbox_tests::events::opened;
use outbox_tests::on_every_backend;

on_every_backend!(
    the_page_shows_the_backlog_and_dead_letters_escaped,
    replay_and_purge_need_the_token,
    bulk_replay_and_purge_take_what_the_filter_selects,
    the_page_lists_the_relays_and_the_published_count,
);

const TOKEN: &str = "s3cret-token";

/// One pending event and one dead letter whose error holds markup. Returns the dead letter's row id.
async fn seed(t: &TestDb) -> i64 {
    t.outbox
        .add_events(&t.db, [opened("a", 1), opened("b", 1)])
        .await
        .unwrap();
    t.dead_letter_oldest("<script>alert(1)</script> refused")
        .await
}

fn app(t: &TestDb, token: Option<&str>) -> axum::Router {
    let ops = Dashboard::new(t.db.clone(), t.outbox.clone())
        .token(token.map(str::to_owned))
        .router();
    axum::Router::new().nest("/ops", ops)
}

async fn send(app: &axum::Router, request: Request<Body>) -> (StatusCode, String, Option<String>) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let location = response
        .headers()
        .get(header::LOCATION)
        .map(|l| l.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        String::from_utf8_lossy(&body).into_owned(),
        location,
    )
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn post(uri: &str, form: &str) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form.to_owned()))
        .unwrap()
}

async fn the_page_shows_the_backlog_and_dead_letters_escaped(backend: Backend) {
    let t = TestDb::new(backend).await;
    let id = seed(&t).await;
    let app = app(&t, Some(TOKEN));
    let (status, page, _) = send(&app, get("/ops")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("<base href=\"/ops/\">"),
        "links resolve under the mount point"
    );
    assert!(page.contains("<b id=\"pending\">1</b> pending"), "{page}");
    assert!(
        page.contains(&format!("href=\"dead-letters/{id}\"")),
        "{page}"
    );
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt; refused"),
        "{page}"
    );
    assert!(
        !page.contains("<script>alert(1)"),
        "the error is text, never markup"
    );
    // The filter narrows the list.
    let (_, filtered, _) = send(&app, get("/ops?reason=nothing+like+it")).await;
    assert!(!filtered.contains(&format!("href=\"dead-letters/{id}\"")));
    let (status, detail, _) = send(&app, get(&format!("/ops/dead-letters/{id}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        detail.contains("&quot;account&quot;: &quot;a&quot;"),
        "the payload: {detail}"
    );
    let (status, _, _) = send(&app, get("/ops/dead-letters/987654321")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, json, _) = send(&app, get("/ops/api/stats")).await;
    assert_eq!(status, StatusCode::OK);
    let stats: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (stats["pending"].as_u64(), stats["dead_letters"].as_u64()),
        (Some(1), Some(1))
    );
    t.drop_tables().await;
}

async fn replay_and_purge_need_the_token(backend: Backend) {
    let t = TestDb::new(backend).await;
    let id = seed(&t).await;
    let read_only = app(&t, None);
    let (_, page, _) = send(&read_only, get("/ops")).await;
    assert!(page.contains("read-only"), "{page}");
    let (status, _, _) = send(
        &read_only,
        post("/ops/dead-letters/replay", &format!("id={id}&token=")),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let app = app(&t, Some(TOKEN));
    for token in ["", "s3cret-tokeN", "s3cret-token-and-more"] {
        let form = format!("id={id}&token={token}");
        let (status, body, _) = send(&app, post("/ops/dead-letters/replay", &form)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "token {token:?}");
        assert!(body.contains("wrong or missing token"), "{body}");
        let (status, _, _) = send(&app, post("/ops/dead-letters/purge", &form)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "token {token:?}");
    }
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 1);

    let form = format!("id={id}&token={TOKEN}");
    let (status, _, location) = send(&app, post("/ops/dead-letters/replay", &form)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let location = location.unwrap();
    assert!(
        location.starts_with("/ops?notice=replayed%201"),
        "{location}"
    );
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 0);
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 2);
    let (_, page, _) = send(&app, get(&location)).await;
    assert!(page.contains("replayed 1 dead letter"), "{page}");

    // A purge deletes it for good.
    t.dead_letter_oldest("again").await;
    let (status, _, _) = send(&app, post("/ops/dead-letters/purge", &form)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 0);
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 1);
    t.drop_tables().await;
}

async fn bulk_replay_and_purge_take_what_the_filter_selects(backend: Backend) {
    let t = TestDb::new(backend).await;
    t.outbox
        .add_events(&t.db, (1..=4).map(|n| opened(&format!("acct-{n}"), 1)))
        .await
        .unwrap();
    for reason in ["broker said no", "broker said no", "too large", "too large"] {
        t.dead_letter_oldest(reason).await;
    }
    let app = app(&t, Some(TOKEN));
    let (_, page, _) = send(&app, get("/ops?reason=said")).await;
    assert!(
        page.contains("replay every dead letter the filter selects"),
        "{page}"
    );
    let (status, _, _) = send(
        &app,
        post("/ops/dead-letters/replay", "type=&reason=said&token=wrong"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 4);

    let (status, _, location) = send(
        &app,
        post(
            "/ops/dead-letters/replay",
            &format!("type=&reason=said&token={TOKEN}"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, page, _) = send(&app, get(&location.unwrap())).await;
    assert!(page.contains("replayed 2 dead letters"), "{page}");
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 2);
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 2);

    // No filter: all of them.
    let (_, page, _) = send(&app, get("/ops")).await;
    assert!(page.contains("purge all dead letters"), "{page}");
    let (status, _, _) = send(
        &app,
        post(
            "/ops/dead-letters/purge",
            &format!("type=&reason=&token={TOKEN}"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(t.outbox.count_dead_letters(&t.db).await.unwrap(), 0);
    assert_eq!(t.outbox.count_unpublished(&t.db).await.unwrap(), 2);
    t.drop_tables().await;
}

async fn the_page_lists_the_relays_and_the_published_count(backend: Backend) {
    let t = TestDb::new(backend).await;
    t.outbox
        .add_events(&t.db, (1..=3).map(|n| opened("a", n)))
        .await
        .unwrap();
    let app = app(&t, None);
    let (_, page, _) = send(&app, get("/ops")).await;
    assert!(
        page.contains("<b id=\"alive\">0</b> alive, 0 gone"),
        "{page}"
    );

    let broker = outbox::publisher::InMemoryPublisher::new();
    let running = outbox_tests::running::Running::start(
        outbox::relay::Relay::builder(t.db.clone(), t.outbox.clone(), broker.clone())
            .name("dashboard-relay")
            .heartbeat_interval(std::time::Duration::from_millis(50))
            .build(),
    );
    assert!(broker.wait_for(3, std::time::Duration::from_secs(20)).await);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let stats = loop {
        let (_, json, _) = send(&app, get("/ops/api/stats")).await;
        let stats: serde_json::Value = serde_json::from_str(&json).unwrap();
        if stats["published"] == 3 || tokio::time::Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(stats["published"], 3, "{stats}");
    assert_eq!(stats["relays_alive"], 1, "{stats}");
    let (_, page, _) = send(&app, get("/ops")).await;
    assert!(
        page.contains("<b id=\"alive\">1</b> alive, 0 gone"),
        "{page}"
    );
    assert!(page.contains("<td>dashboard-relay</td>"), "{page}");
    running.stop().await;
    t.drop_tables().await;
}
