//! Connecting to the database from a URL, with errors that say what is wrong.

use std::time::Duration;

use sea_orm::{ConnectOptions, Database, DatabaseConnection};

use super::error::RepositoryError;

/// Connects to `url` (`postgres://`, `mysql://` or `mariadb://`, `sqlite:`), with statement logging off (the
/// relay logs what matters) and a 5-second connect timeout (a database that is still starting gets that long).
///
/// A scheme whose driver is not compiled in, a malformed URL and a refused connection are each an error that
/// names the URL (password hidden) and the cause.
pub async fn connect(url: &str) -> Result<DatabaseConnection, RepositoryError> {
    let shown = crate::redact::password(url);
    let invalid = |reason: String| RepositoryError::InvalidUrl {
        url: shown.clone(),
        reason,
    };
    let scheme = url
        .split(':')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let (url, feature) = match scheme.as_str() {
        "postgres" | "postgresql" => (url.to_owned(), "postgres"),
        "mysql" => (url.to_owned(), "mysql"),
        // sqlx speaks the MySQL protocol to MariaDB under the `mysql` scheme.
        "mariadb" => (format!("mysql{}", &url["mariadb".len()..]), "mysql"),
        "sqlite" => (url.to_owned(), "sqlite"),
        _ => {
            return Err(invalid(format!(
                "unsupported scheme `{scheme}`: expected postgres://, mysql://, mariadb:// or sqlite:"
            )));
        }
    };
    // The arms are `cfg!` constants: in a build with one driver, clippy would see a `matches!`.
    #[allow(clippy::match_like_matches_macro)]
    let compiled = match feature {
        "postgres" => cfg!(feature = "postgres"),
        "mysql" => cfg!(feature = "mysql"),
        _ => cfg!(feature = "sqlite"),
    };
    if !compiled {
        return Err(invalid(format!(
            "this build has no {feature} driver: enable the `{feature}` feature of the outbox crate"
        )));
    }
    let mut options = ConnectOptions::new(url);
    options
        .sqlx_logging(false)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5));
    Database::connect(options)
        .await
        .map_err(|source| RepositoryError::Connect { url: shown, source })
}
