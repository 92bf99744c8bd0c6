//! Keeping secrets out of error messages and logs.

/// Query parameters whose values are secrets when their name (lower case) contains one of these.
const SECRET_PARAMETERS: [&str; 7] = [
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "credential",
    "auth",
];

/// Schemes whose user part alone is a secret: `nats://TOKEN@host` authenticates with a token.
const TOKEN_SCHEMES: [&str; 2] = ["nats", "tls"];

/// `url` with its secrets replaced by `***`: the password of the user part (or the whole user part where it is a
/// token), and the values of query parameters named like secrets (`password`, `token`, `sslpassword`, ...).
///
/// Passwords are often pasted unencoded, so the user part is taken to end at the last `@` of the authority, or,
/// when the text before the first `/` holds no `@`, at the last `@` before the query (a password with a `/`).
/// Where that reading is ambiguous it hides more, never less.
pub(crate) fn password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let first_slash = rest.find('/').unwrap_or(rest.len());
    let query_start = rest.find(['?', '#']).unwrap_or(rest.len());
    let at = rest[..first_slash]
        .rfind('@')
        .or_else(|| rest[..query_start].rfind('@'));
    let (user_part, after) = match at {
        Some(at) => {
            let user_info = &rest[..at];
            let shown = match user_info.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None if TOKEN_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) => {
                    "***".to_owned()
                }
                None => user_info.to_owned(),
            };
            (format!("{shown}@"), &rest[at + 1..])
        }
        None => (String::new(), rest),
    };
    let (base, query) = match after.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (after, None),
    };
    let mut out = format!("{scheme}://{user_part}{base}");
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if is_secret(name) => format!("{name}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMETERS.iter().any(|secret| name.contains(secret))
}

#[cfg(test)]
mod tests {
    use super::password;

    #[test]
    fn passwords_never_reach_error_messages() {
        for (url, shown) in [
            (
                "postgres://app:s3cret@db:5432/x",
                "postgres://app:***@db:5432/x",
            ),
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://guest:***@127.0.0.1:5672/%2f",
            ),
            ("mysql://root@127.0.0.1/test", "mysql://root@127.0.0.1/test"),
            ("sqlite::memory:", "sqlite::memory:"),
            ("postgres://a:b@c@host/db", "postgres://a:***@host/db"),
            ("redis://:s3cret@cache:6379", "redis://:***@cache:6379"),
        ] {
            assert_eq!(password(url), shown, "{url}");
        }
    }

    #[test]
    fn a_token_in_the_user_part_is_hidden_whole() {
        assert_eq!(password("nats://s3cret@nats:4222"), "nats://***@nats:4222");
        assert_eq!(password("tls://s3cret@nats:4222"), "tls://***@nats:4222");
        assert_eq!(
            password("nats://user:s3cret@nats:4222"),
            "nats://user:***@nats:4222"
        );
    }

    #[test]
    fn secrets_in_query_parameters_are_hidden() {
        assert_eq!(
            password("postgres://db/x?user=app&password=s3cret&sslmode=require"),
            "postgres://db/x?user=app&password=***&sslmode=require"
        );
        assert_eq!(
            password("kafka://broker:9092?sasl_token=s3cret"),
            "kafka://broker:9092?sasl_token=***"
        );
        assert_eq!(
            password("postgres://db/x?sslpassword=s3cret"),
            "postgres://db/x?sslpassword=***"
        );
        assert_eq!(
            password("redis://cache:6379?AUTH=s3cret"),
            "redis://cache:6379?AUTH=***"
        );
    }

    #[test]
    fn unencoded_characters_in_a_password_do_not_let_it_through() {
        for (url, secret) in [
            ("amqp://user:s3/cr@t@rabbit:5672/%2f", "s3/cr"),
            ("postgres://app:s3?cret@db:5432/x", "s3?cret"),
            ("postgres://app:s3#cret@db:5432/x", "s3#cret"),
            ("amqp://user:a:b:c@rabbit/%2f", "a:b:c"),
            ("mysql://app:p%40ss word@db/x", "ss word"),
        ] {
            let shown = password(url);
            assert!(!shown.contains(secret), "{url} -> {shown}");
            assert!(shown.contains("***"), "{url} -> {shown}");
        }
    }
}
