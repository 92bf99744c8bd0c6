//! An ops dashboard a service mounts: the backlog and its trend, dead letters with their reasons, replay and
//! purge, and the relay's health, as server-rendered pages (feature `ops`).
//!
//! ```no_run
//! # async fn example(db: sea_orm::DatabaseConnection, outbox: outbox::OutboxRepository) {
//! use outbox::ops::Dashboard;
//!
//! let ops = Dashboard::new(db, outbox)
//!     .token(std::env::var("OUTBOX_OPS_TOKEN").ok()) // without a token, nothing can be changed from the page
//!     .router();
//! let app: axum::Router = axum::Router::new().nest("/ops", ops);
//! # }
//! ```
//!
//! Nothing is served unless the router is mounted. Reading is open to whoever reaches the route; replay and
//! purge need the token, typed into the page's form and compared in constant time. Put the route behind the
//! service's own authentication as well (an axum middleware `layer` on the nested router) when the dead
//! letters' payloads are not for everyone who can reach the service.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, FromRequestParts, OriginalUri, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use sea_orm::DatabaseConnection;
use serde::Deserialize;

use crate::health::HealthCheck;
use crate::repository::{DeadLetterFilter, OutboxRepository, StoredEvent};

/// Dead letters listed on the page at most.
const LISTED: u64 = 200;

/// Builds the dashboard's router.
#[derive(Debug)]
#[must_use]
pub struct Dashboard {
    db: DatabaseConnection,
    repository: OutboxRepository,
    token: Option<String>,
    health: Option<HealthCheck>,
}

struct Ops {
    db: DatabaseConnection,
    repository: OutboxRepository,
    token: Option<String>,
    health: Option<HealthCheck>,
}

impl Dashboard {
    /// A dashboard of `repository`'s table on `db`, read-only until a [`token`](Self::token) is set.
    pub fn new(db: DatabaseConnection, repository: OutboxRepository) -> Self {
        Self {
            db,
            repository,
            token: None,
            health: None,
        }
    }

    /// The token that replay and purge require; `None` (or an empty token) leaves the dashboard read-only.
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    /// Shows this health check's report (database, broker, lag, and the relay if it has one).
    pub fn health(mut self, health: HealthCheck) -> Self {
        self.health = Some(health);
        self
    }

    /// The routes, relative to where they are nested: `/` (the page), `/dead-letters/{id}`,
    /// `POST /dead-letters/replay`, `POST /dead-letters/purge`, and `/api/stats` (JSON, which the page's chart
    /// polls).
    pub fn router<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        let ops = Arc::new(Ops {
            db: self.db,
            repository: self.repository,
            token: self.token,
            health: self.health,
        });
        Router::new()
            .route("/", get(overview))
            .route("/dead-letters/{id}", get(dead_letter))
            .route("/dead-letters/replay", post(replay))
            .route("/dead-letters/purge", post(purge))
            .route("/api/stats", get(stats))
            .with_state(ops)
    }
}

/// Where the dashboard is mounted, with a trailing `/`: the pages' `<base>`, so their relative links work under
/// whatever path the service nests the router at.
struct Base(String);

impl<S: Send + Sync> FromRequestParts<S> for Base {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let inner = parts.uri.path();
        let original = parts
            .extensions
            .get::<OriginalUri>()
            .map_or(inner, |uri| uri.0.path());
        let prefix = if inner == "/" {
            original.trim_end_matches('/')
        } else {
            original.strip_suffix(inner).unwrap_or("")
        };
        Ok(Self(format!("{prefix}/")))
    }
}

/// An error page: the database's error, or a refusal.
struct PageError(StatusCode, String);

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = page(
            "outbox: error",
            None,
            &format!("<p class=\"bad\">{}</p>", escape(&self.1)),
        );
        (self.0, body).into_response()
    }
}

impl From<crate::repository::RepositoryError> for PageError {
    fn from(error: crate::repository::RepositoryError) -> Self {
        Self(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
    }
}

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    #[serde(default, rename = "type")]
    event_type: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    notice: String,
}

impl ListQuery {
    /// No filter: every dead letter.
    fn is_everything(&self) -> bool {
        self.event_type.is_empty() && self.reason.is_empty()
    }

    fn filter(&self) -> DeadLetterFilter {
        let mut all = Vec::new();
        if !self.event_type.is_empty() {
            all.push(DeadLetterFilter::EventType(self.event_type.clone()));
        }
        if !self.reason.is_empty() {
            all.push(DeadLetterFilter::ErrorContains(self.reason.clone()));
        }
        DeadLetterFilter::AllOf(all)
    }
}

async fn overview(
    State(ops): State<Arc<Ops>>,
    Base(base): Base,
    Query(query): Query<ListQuery>,
) -> Result<Html<String>, PageError> {
    let stats = ops.repository.stats(&ops.db).await?;
    let backlog = ops.repository.backlog(&ops.db).await?;
    let dead = ops
        .repository
        .dead_letters_matching(&ops.db, &query.filter(), LISTED, 0)
        .await?;
    let mut body = String::new();
    if !query.notice.is_empty() {
        let _ = write!(body, "<p class=\"notice\">{}</p>", escape(&query.notice));
    }
    let oldest = stats
        .oldest_pending_age()
        .map_or_else(|| "-".to_owned(), |age| format!("{} s", age.as_secs()));
    let _ = write!(
        body,
        "<section><h2>Backlog</h2><p>table <code>{}</code> &middot; <b id=\"pending\">{}</b> pending &middot; \
         oldest waiting {} &middot; <b id=\"dead\">{}</b> dead letters &middot; \
         <b id=\"rate\">-</b> published/s</p>\
         <svg id=\"chart\" width=\"600\" height=\"120\" role=\"img\" \
         aria-label=\"pending events and events published per second over time\"></svg>",
        escape(ops.repository.table()),
        stats.pending,
        oldest,
        stats.dead_letters
    );
    if !backlog.is_empty() {
        body.push_str("<table><tr><th>aggregate type</th><th>pending</th></tr>");
        for b in &backlog {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td></tr>",
                escape(&b.aggregate_type),
                b.pending
            );
        }
        body.push_str("</table>");
    }
    body.push_str("</section>");
    body.push_str(&relays(&ops.repository.relays(&ops.db).await));
    if let Some(health) = &ops.health {
        let report = health.check_health().await;
        let json = serde_json::to_string_pretty(&report).unwrap_or_default();
        let _ = write!(
            body,
            "<section><h2>Health: {}</h2><pre>{}</pre></section>",
            escape(&format!("{:?}", report.status).to_lowercase()),
            escape(&json)
        );
    }
    let _ = write!(
        body,
        "<section><h2>Dead letters</h2><form method=\"get\">type <input name=\"type\" value=\"{}\"> \
         error contains <input name=\"reason\" value=\"{}\"> <button>filter</button></form>",
        escape(&query.event_type),
        escape(&query.reason)
    );
    if !dead.is_empty() {
        body.push_str(&bulk_actions(&query, ops.token.is_some()));
    }
    body.push_str(
        "<table id=\"dead-letters\"><tr><th>id</th><th>type</th><th>aggregate</th><th>attempts</th>\
         <th>last error</th><th></th></tr>",
    );
    for row in &dead {
        let _ = write!(
            body,
            "<tr><td><a href=\"dead-letters/{id}\">{id}</a></td><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td>\
             <td>{}</td></tr>",
            escape(&row.event_type),
            escape(&row.aggregate_type),
            escape(&row.aggregate_id),
            row.attempts,
            escape(row.last_error.as_deref().unwrap_or("")),
            actions(row.id, ops.token.is_some()),
            id = row.id,
        );
    }
    body.push_str("</table></section>");
    body.push_str(CHART);
    Ok(page("outbox", Some(&base), &body))
}

/// The replay and purge buttons of one dead letter, with the token field they need.
fn actions(id: i64, enabled: bool) -> String {
    if !enabled {
        return "<span title=\"no token is configured: read-only\">read-only</span>".to_owned();
    }
    ["replay", "purge"]
        .map(|action| {
            format!(
                "<form method=\"post\" action=\"dead-letters/{action}\" class=\"inline\">\
                 <input type=\"hidden\" name=\"id\" value=\"{id}\">\
                 <input type=\"password\" name=\"token\" placeholder=\"token\" aria-label=\"token\">\
                 <button name=\"do\" value=\"{action}\">{action}</button></form>"
            )
        })
        .concat()
}

/// Replay or purge every dead letter the filter selects (not only those listed), with the token they need.
fn bulk_actions(query: &ListQuery, enabled: bool) -> String {
    if !enabled {
        return String::new();
    }
    let what = if query.is_everything() {
        "all dead letters"
    } else {
        "every dead letter the filter selects"
    };
    ["replay", "purge"]
        .map(|action| {
            format!(
                "<form method=\"post\" action=\"dead-letters/{action}\" class=\"inline\">\
                 <input type=\"hidden\" name=\"type\" value=\"{}\">\
                 <input type=\"hidden\" name=\"reason\" value=\"{}\">\
                 <input type=\"password\" name=\"token\" placeholder=\"token\" aria-label=\"token\">\
                 <button name=\"do\" value=\"{action}-all\">{action} {what}</button></form> ",
                escape(&query.event_type),
                escape(&query.reason),
            )
        })
        .concat()
}

/// The relays on the table, as each last reported itself.
fn relays(
    relays: &Result<Vec<crate::repository::RelayInfo>, crate::repository::RepositoryError>,
) -> String {
    let relays = match relays {
        Ok(relays) => relays,
        Err(error) => {
            return format!(
                "<section><h2>Relays</h2><p class=\"bad\">unknown: {}; the outbox migration creates the relays \
                 table</p></section>",
                escape(&error.to_string())
            );
        }
    };
    let alive = relays.iter().filter(|r| r.is_alive()).count();
    let mut out = format!(
        "<section><h2>Relays</h2><p><b id=\"alive\">{alive}</b> alive, {} gone</p>",
        relays.len() - alive
    );
    if !relays.is_empty() {
        out.push_str(
            "<table id=\"relays\"><tr><th>relay</th><th>state</th><th>last heartbeat</th><th>started</th>\
             <th>published</th><th>dead-lettered</th></tr>",
        );
        for r in relays {
            let _ = write!(
                out,
                "<tr><td>{}</td><td class=\"{}\">{}</td><td>{} s ago</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&r.name),
                if r.is_alive() { "" } else { "bad" },
                r.state(),
                r.since_heartbeat().as_secs(),
                r.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                r.published,
                r.dead_lettered
            );
        }
        out.push_str("</table>");
    }
    out.push_str("</section>");
    out
}

async fn dead_letter(
    State(ops): State<Arc<Ops>>,
    Base(base): Base,
    Path(id): Path<i64>,
) -> Result<Html<String>, PageError> {
    let rows = ops
        .repository
        .dead_letters_matching(&ops.db, &DeadLetterFilter::Id(id), 1, 0)
        .await?;
    let row = rows.first().ok_or_else(|| {
        PageError(
            StatusCode::NOT_FOUND,
            format!("no dead letter with id {id}"),
        )
    })?;
    Ok(page(
        &format!("outbox: dead letter {id}"),
        Some(&base),
        &format!(
            "<p><a href=\"./\">back</a></p>{}",
            details(row, ops.token.is_some())
        ),
    ))
}

fn details(row: &StoredEvent, enabled: bool) -> String {
    let optional = |v: &Option<String>| escape(v.as_deref().unwrap_or("-"));
    let payload = serde_json::from_str::<serde_json::Value>(&row.payload)
        .map_or_else(|_| row.payload.clone(), |v| format!("{v:#}"));
    format!(
        "<dl><dt>id</dt><dd>{}</dd><dt>event id</dt><dd>{}</dd><dt>type</dt><dd>{} (version {})</dd>\
         <dt>aggregate</dt><dd>{}/{}</dd><dt>occurred</dt><dd>{}</dd><dt>attempts</dt><dd>{}</dd>\
         <dt>correlation id</dt><dd>{}</dd><dt>last error</dt><dd>{}</dd></dl><pre>{}</pre>{}",
        row.id,
        row.event_id,
        escape(&row.event_type),
        escape(&row.data_version),
        escape(&row.aggregate_type),
        escape(&row.aggregate_id),
        row.occurred_at.to_rfc3339(),
        row.attempts,
        optional(&row.correlation_id),
        optional(&row.last_error),
        escape(&payload),
        actions(row.id, enabled)
    )
}

/// One dead letter by `id`, or every one the filter (`type`, `reason`) selects.
#[derive(Debug, Deserialize)]
struct ActionForm {
    #[serde(default)]
    id: Option<i64>,
    #[serde(flatten)]
    selected: ListQuery,
    #[serde(default)]
    token: String,
}

impl ActionForm {
    fn filter(&self) -> DeadLetterFilter {
        self.id
            .map_or_else(|| self.selected.filter(), DeadLetterFilter::Id)
    }

    /// Which dead letters, for the notice and the log.
    fn selection(&self) -> String {
        match self.id {
            Some(id) => format!("id {id}"),
            None if self.selected.is_everything() => "all".to_owned(),
            None => format!(
                "type '{}', error containing '{}'",
                self.selected.event_type, self.selected.reason
            ),
        }
    }
}

async fn replay(
    State(ops): State<Arc<Ops>>,
    Base(base): Base,
    Form(form): Form<ActionForm>,
) -> Result<Redirect, PageError> {
    ops.act(&base, &form, Action::Replay).await
}

async fn purge(
    State(ops): State<Arc<Ops>>,
    Base(base): Base,
    Form(form): Form<ActionForm>,
) -> Result<Redirect, PageError> {
    ops.act(&base, &form, Action::Purge).await
}

#[derive(Clone, Copy)]
enum Action {
    Replay,
    Purge,
}

/// Back to the overview, with a notice of what was done.
fn back(base: &str, notice: &str) -> Redirect {
    let notice: String =
        percent_encoding::utf8_percent_encode(notice, percent_encoding::NON_ALPHANUMERIC).collect();
    // The overview's own path: the mount point without its trailing `/` (a nested router's `/` route is the mount
    // point itself), or `/` at the root.
    let overview = match base.trim_end_matches('/') {
        "" => "/",
        path => path,
    };
    Redirect::to(&format!("{overview}?notice={notice}"))
}

impl Ops {
    /// Replays or purges the form's dead letter if its token is right, and goes back to the overview.
    async fn act(
        &self,
        base: &str,
        form: &ActionForm,
        action: Action,
    ) -> Result<Redirect, PageError> {
        self.authorize(&form.token)?;
        let filter = form.filter();
        let (n, done) = match action {
            Action::Replay => (
                self.repository
                    .replay_dead_letters(&self.db, filter)
                    .await?,
                "replayed",
            ),
            Action::Purge => (
                self.repository.purge_dead_letters(&self.db, filter).await?,
                "purged",
            ),
        };
        let selection = form.selection();
        tracing::info!(target: "outbox", %selection, count = n, action = done, "dead letters changed from the ops dashboard");
        let noun = if n == 1 {
            "dead letter"
        } else {
            "dead letters"
        };
        Ok(back(base, &format!("{done} {n} {noun} ({selection})")))
    }

    fn authorize(&self, given: &str) -> Result<(), PageError> {
        let Some(token) = &self.token else {
            return Err(PageError(
                StatusCode::FORBIDDEN,
                "this dashboard is read-only: no token is configured".to_owned(),
            ));
        };
        if constant_time_eq(token.as_bytes(), given.as_bytes()) {
            Ok(())
        } else {
            Err(PageError(
                StatusCode::FORBIDDEN,
                "wrong or missing token".to_owned(),
            ))
        }
    }
}

/// Compares without stopping at the first differing byte, so the time taken says nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut differ = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        differ |= usize::from(x ^ b.get(i).copied().unwrap_or(!x));
    }
    differ == 0
}

async fn stats(State(ops): State<Arc<Ops>>) -> Result<Response, PageError> {
    let stats = ops.repository.stats(&ops.db).await?;
    // Without the relays table the chart still has the backlog.
    let relays = ops.repository.relays(&ops.db).await.unwrap_or_default();
    Ok(axum::Json(serde_json::json!({
        "pending": stats.pending,
        "dead_letters": stats.dead_letters,
        "oldest_pending_age_seconds": stats.oldest_pending_age().map(|a| a.as_secs_f64()),
        "relays_alive": relays.iter().filter(|r| r.is_alive()).count(),
        "published": relays.iter().map(|r| r.published).sum::<u64>(),
    }))
    .into_response())
}

fn page(title: &str, base: Option<&str>, body: &str) -> Html<String> {
    let base = base.map_or_else(String::new, |b| format!("<base href=\"{}\">", escape(b)));
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{base}<title>{}</title>\
         <style>{STYLE}</style></head><body><h1>{}</h1>{body}</body></html>",
        escape(title),
        escape(title)
    ))
}

/// Text for HTML: the five characters that could end an element or an attribute are escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}\
    td,th{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:left}form.inline{display:inline}\
    .bad{color:#b00}.notice{background:#eef;padding:.5em}svg{border:1px solid #ddd;display:block;margin:.5em 0}";

/// Polls `api/stats` every two seconds and draws the last five minutes: pending events (blue, left scale) and
/// events published per second (green, right scale). The rate is the relays' published counters over the last 10
/// s: they move at each heartbeat (every 5 s by default), and a relay that stops takes its count with it, which
/// the rate skips rather than showing as negative.
const CHART: &str = "<script>(function(){const points=[];const svg=document.getElementById('chart');\
    function line(values,max,colour){return '<polyline fill=\"none\" stroke=\"'+colour+'\" stroke-width=\"2\" points=\"'+\
    values.map((v,i)=>(i*4)+','+(115-110*v/max)).join(' ')+'\"/>';}\
    async function tick(){try{const r=await fetch('api/stats');if(!r.ok)return;const s=await r.json();\
    document.getElementById('pending').textContent=s.pending;document.getElementById('dead').textContent=s.dead_letters;\
    const now=Date.now();let rate=0;const then=points.find(p=>now-p.at<=10500);\
    if(then&&now>then.at&&s.published>=then.published){rate=1000*(s.published-then.published)/(now-then.at);}\
    points.push({at:now,pending:s.pending,published:s.published,rate:rate});if(points.length>150)points.shift();\
    document.getElementById('rate').textContent=Math.round(rate);\
    const maxPending=Math.max(1,...points.map(p=>p.pending));const maxRate=Math.max(1,...points.map(p=>p.rate));\
    svg.innerHTML=line(points.map(p=>p.pending),maxPending,'#36c')+line(points.map(p=>p.rate),maxRate,'#2a2')+\
    '<text x=\"4\" y=\"12\" font-size=\"10\" fill=\"#36c\">pending, max '+maxPending+'</text>'+\
    '<text x=\"596\" y=\"12\" font-size=\"10\" fill=\"#2a2\" text-anchor=\"end\">published/s, max '+Math.round(maxRate)+'</text>';\
    }catch(e){}}tick();setInterval(tick,2000);})();</script>";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_special_characters_are_escaped() {
        assert_eq!(
            escape("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret!"));
        assert!(!constant_time_eq(b"secret", b""));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
