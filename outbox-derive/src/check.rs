//! Checks of attribute values against the CloudEvents 1.0 rules, done at compile time.
//!
//! Each check returns the message to show on the offending literal.

/// CloudEvents extension attributes this crate writes itself, plus the spec's context attributes: a type's own
/// extension may not reuse them.
const RESERVED_ATTRIBUTES: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "subject",
    "datacontenttype",
    "dataschema",
    "data",
    "dataversion",
    "aggregatetype",
    "partitionkey",
    "correlationid",
    "causationid",
    "traceparent",
    "tracestate",
];

/// Event types travel in headers on every broker: visible ASCII only, so none can break a header line.
pub fn event_type(value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err("event `type` must not be empty; use a reverse-DNS name like \"com.example.user.created\"".into());
    }
    visible_ascii(value, "event `type`", "\"com.example.user.created\"")
}

/// `aggregate_type` and `topic` become topic, stream and subject names.
pub fn name(value: &str, what: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    visible_ascii(value, what, "\"com.example.user\"")
}

fn visible_ascii(value: &str, what: &str, example: &str) -> Result<(), String> {
    match value.chars().find(|c| !c.is_ascii_graphic()) {
        None => Ok(()),
        Some(c) => Err(format!(
            "{what} must be visible ASCII without spaces, like {example}; found {:?}",
            c
        )),
    }
}

/// CloudEvents `source` is a URI-reference (RFC 3986): e.g. `/user-service` or `https://example.com/users`.
pub fn source(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("`source` must be a non-empty URI-reference, like \"/user-service\"".into());
    }
    uri_chars(value).map_err(|detail| {
        format!("`source` must be a URI-reference (RFC 3986), like \"/user-service\" or \"https://example.com/users\"; {detail}")
    })
}

/// CloudEvents `dataschema` is an absolute URI.
pub fn dataschema(value: &str) -> Result<(), String> {
    let example = "like \"https://example.com/schemas/user-created.json\"";
    let scheme_ok = value.split_once(':').is_some_and(|(scheme, _)| {
        let mut chars = scheme.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    });
    if !scheme_ok {
        return Err(format!(
            "`dataschema` must be an absolute URI with a scheme, {example}"
        ));
    }
    uri_chars(value)
        .map_err(|detail| format!("`dataschema` must be an absolute URI, {example}; {detail}"))
}

fn uri_chars(value: &str) -> Result<(), String> {
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let escape = bytes.get(i + 1..i + 3);
            if !escape.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
                return Err("`%` must start a percent-escape such as `%20`".into());
            }
            i += 3;
            continue;
        }
        let allowed = b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=".contains(&b);
        if !allowed {
            let c = value[i..].chars().next().unwrap_or('?');
            return Err(format!("{c:?} is not allowed (percent-encode it)"));
        }
        i += 1;
    }
    Ok(())
}

/// Data versions are `MAJOR.MINOR`, e.g. `1.0`.
pub fn version(value: &str) -> Result<(), String> {
    let valid = value
        .split_once('.')
        .is_some_and(|(major, minor)| digits(major) && digits(minor));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`version` must be MAJOR.MINOR, like \"1.0\" or \"2.1\"; found {value:?}"
        ))
    }
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Extension attribute names: `[a-z0-9]{1,20}` (CloudEvents 1.0), and not one the crate already writes.
pub fn extension_name(name: &str) -> Result<(), String> {
    let well_formed = !name.is_empty()
        && name.len() <= 20
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !well_formed {
        return Err(format!(
            "CloudEvents extension names are 1 to 20 lowercase letters or digits (`[a-z0-9]{{1,20}}`); `{name}` is not"
        ));
    }
    if RESERVED_ATTRIBUTES.contains(&name) {
        return Err(format!(
            "`{name}` is a CloudEvents attribute this crate sets itself; choose another extension name"
        ));
    }
    Ok(())
}

/// The closest valid key to a misspelt one, if any is close enough to be a likely typo.
pub fn suggest<'a>(unknown: &str, valid: &[&'a str]) -> Option<&'a str> {
    valid
        .iter()
        .map(|&candidate| (strsim::damerau_levenshtein(unknown, candidate), candidate))
        .filter(|&(distance, candidate)| distance <= candidate.len().div_ceil(3).max(1))
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types() {
        assert!(event_type("com.example.user.created").is_ok());
        assert!(event_type("").is_err());
        assert!(event_type("   ").is_err());
        assert!(event_type("com.example user").is_err());
        assert!(event_type("com.example\r\nX-Injected: 1").is_err());
    }

    #[test]
    fn sources() {
        for ok in [
            "/user-service",
            "https://example.com/users?x=1#f",
            "urn:uuid:6e8bc430",
            "a%20b",
            "svc",
        ] {
            assert!(source(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/user service",
            "https://example.com/<x>",
            "50%",
            "%zz",
            "naïve",
        ] {
            assert!(source(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dataschemas_are_absolute() {
        assert!(dataschema("https://example.com/s.json").is_ok());
        assert!(dataschema("urn:example:schema").is_ok());
        assert!(dataschema("/relative/schema.json").is_err());
        assert!(dataschema("1http://x").is_err());
    }

    #[test]
    fn versions() {
        assert!(version("1.0").is_ok());
        assert!(version("12.34").is_ok());
        for bad in ["1", "1.", ".1", "v1.0", "1.0.0", "1.x", ""] {
            assert!(version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn extension_names() {
        assert!(extension_name("tenant").is_ok());
        assert!(extension_name("abcdefghij0123456789").is_ok());
        assert!(extension_name("abcdefghij01234567890").is_err());
        assert!(extension_name("Tenant").is_err());
        assert!(extension_name("tenant_id").is_err());
        assert!(extension_name("correlationid").is_err());
    }

    #[test]
    fn suggestions() {
        let keys = ["type", "source", "version", "aggregate_type"];
        assert_eq!(suggest("sorce", &keys), Some("source"));
        assert_eq!(suggest("verison", &keys), Some("version"));
        assert_eq!(suggest("aggregate_typ", &keys), Some("aggregate_type"));
        assert_eq!(suggest("colour", &keys), None);
    }
}
