//! `outbox tail`: follow events as the relays mark them published (the rows design's marks: on a table the
//! commit-order cursor delivers the repository refuses it by name, as nothing is marked there).

use std::time::Duration;

use chrono::Utc;

use crate::render::event_json;
use crate::{CliError, Target};

/// Rows read per look; a full page is followed at once by the next.
const PAGE: u64 = 500;

/// What to follow and how.
#[derive(Debug, clap::Args)]
pub(crate) struct Tail {
    /// Start from the oldest published event still in the table instead of from now.
    #[arg(long)]
    from_start: bool,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// How often to look for new ones.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// How far behind the present to read: a mark still committing, or stamped by a relay whose clock is behind
    /// by less than this, is still shown.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// One JSON object per line instead of a text line.
    #[arg(long)]
    json: bool,
}

impl Tail {
    pub(crate) async fn run(&self, target: &Target) -> Result<(), CliError> {
        let Target { db, outbox } = target;
        if crate::settings().is_ok_and(|settings| settings.delete_on_publish) {
            eprintln!(
                "note: OUTBOX_DELETE_ON_PUBLISH is on, so published events leave no row to show"
            );
        }
        let settle = chrono::Duration::from_std(self.settle).unwrap_or(chrono::Duration::MAX);
        let mut after = (!self.from_start).then(|| (Utc::now() - settle, i64::MAX));
        let mut shown = 0;
        loop {
            let page = outbox
                .published_between(db, after, Utc::now() - settle, PAGE)
                .await?;
            for event in &page {
                if self.json {
                    println!("{}", event_json(event));
                } else {
                    println!(
                        "{}  {}  {}  {}/{}  {}",
                        event
                            .published_at
                            .map_or_else(String::new, |t| t.to_rfc3339()),
                        event.id,
                        event.event_type,
                        event.aggregate_type,
                        event.aggregate_id,
                        event.event_id
                    );
                }
                shown += 1;
                if self.count.is_some_and(|count| shown >= count) {
                    return Ok(());
                }
                if let Some(published_at) = event.published_at {
                    after = Some((published_at, event.id));
                }
            }
            if (page.len() as u64) < PAGE {
                tokio::time::sleep(self.interval).await;
            }
        }
    }
}
