//! Wake-ups from PostgreSQL: LISTEN on the outbox table's channel, which the table's insert trigger NOTIFYs.
//! PostgreSQL delivers a notification when the inserting transaction commits and folds duplicates within one
//! transaction, so a burst of commits costs the relay at most one extra wake per batch.

use sea_orm::DatabaseConnection;

use super::RelayHandle;

/// The LISTEN task; stops when dropped.
pub(crate) struct Listener {
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    /// Starts listening if `db` is PostgreSQL; other backends poll.
    #[cfg(feature = "postgres")]
    pub(crate) fn start(
        db: &DatabaseConnection,
        channel: &str,
        handle: RelayHandle,
    ) -> Option<Self> {
        use sea_orm::DbBackend;
        if db.get_database_backend() != DbBackend::Postgres {
            return None;
        }
        let pool = db.get_postgres_connection_pool().clone();
        let channel = channel.to_owned();
        let task = tokio::spawn(async move {
            loop {
                match listen(&pool, &channel, &handle).await {
                    Ok(()) => return,
                    Err(error) => {
                        tracing::warn!(target: "outbox", %error, "LISTEN connection lost; polling until it is back");
                        // Anything committed while the connection was down would go unnoticed until the next poll.
                        handle.wake();
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Some(Self { task })
    }

    #[cfg(not(feature = "postgres"))]
    pub(crate) fn start(
        _db: &DatabaseConnection,
        _channel: &str,
        _handle: RelayHandle,
    ) -> Option<Self> {
        None
    }
}

#[cfg(feature = "postgres")]
async fn listen(
    pool: &sea_orm::sqlx::PgPool,
    channel: &str,
    handle: &RelayHandle,
) -> Result<(), sea_orm::sqlx::Error> {
    let mut listener = sea_orm::sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    tracing::debug!(target: "outbox", channel, "listening for new outbox events");
    loop {
        // `try_recv` reports a lost connection as `None` (and reconnects on the next call) instead of hiding it;
        // either way there may be something to publish.
        listener.try_recv().await?;
        handle.wake();
    }
}
