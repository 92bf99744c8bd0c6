use outbox::registry::{Registry, RegistryError};
use outbox::{DynEvent, EventEnvelope, OutboxEvent};
use peer_events::PeerPinged;
use uuid::Uuid;

use crate::events::{UserCreated, UserCreatedV2, UserDeleted, conflict};

#[test]
fn decodes_a_stored_row_into_its_rust_type_by_type_and_version() {
    let id = Uuid::now_v7();
    let json = format!(r#"{{"user_id":"{id}","email":"ada@example.com"}}"#);
    let event = Registry::global()
        .decode("com.example.user.created", "1.0", &json)
        .expect("registered by the derive");
    assert!(event.is::<UserCreated>());
    assert_eq!(
        event.downcast_ref::<UserCreated>(),
        Some(&UserCreated {
            user_id: id,
            email: "ada@example.com".into()
        })
    );

    let json_v2 = format!(r#"{{"user_id":"{id}","email":"a@b.c","display_name":"Ada"}}"#);
    let v2 = Registry::global()
        .decode("com.example.user.created", "2.0", &json_v2)
        .expect("version 2.0 is its own type");
    let v2 = v2
        .downcast::<UserCreatedV2>()
        .expect("decoded as the 2.0 struct");
    assert_eq!(v2.display_name, "Ada");
}

#[test]
fn finds_types_registered_in_another_crate() {
    // Referencing the crate keeps the linker from dropping it (see the registry docs on that failure mode).
    assert_eq!(peer_events::CRATE, "peer-events");
    let event = Registry::global()
        .decode(
            "com.example.peer.pinged",
            "1.0",
            r#"{"peer_id":7,"note":"hi"}"#,
        )
        .expect("registered from the peer-events crate");
    assert_eq!(
        event.downcast_ref::<PeerPinged>().map(|p| p.peer_id),
        Some(7)
    );
    let info = Registry::global()
        .get("com.example.peer.pinged", "1.0")
        .unwrap();
    assert_eq!(info.rust_type, "peer_events::PeerPinged");
    assert_eq!(info.meta.source, "/peer-service");
}

#[test]
fn a_decoded_event_renders_the_same_message_as_the_typed_one() {
    let typed = EventEnvelope::new(UserDeleted {
        user_id: Uuid::now_v7(),
    })
    .with_correlation_id("c-1");
    let json = typed.event().to_json_string();
    let decoded = Registry::global()
        .decode(UserDeleted::EVENT_TYPE, UserDeleted::DATA_VERSION, &json)
        .unwrap();
    let dynamic = typed.clone().map(|_| decoded);
    let (a, b) = (typed.to_message().unwrap(), dynamic.to_message().unwrap());
    assert_eq!(a.id, b.id);
    assert_eq!(a.data.get(), b.data.get());
    assert_eq!(a.key, b.key);
    assert_eq!(a.destination, b.destination);
    assert_eq!(a.extensions, b.extensions);
    assert_eq!(b.correlation_id.as_deref(), Some("c-1"));
}

trait ToJsonString {
    fn to_json_string(&self) -> String;
}

impl<E: OutboxEvent> ToJsonString for E {
    fn to_json_string(&self) -> String {
        DynEvent::to_json(self).unwrap().get().to_owned()
    }
}

#[test]
fn unknown_type_is_an_error_that_names_it() {
    let err = Registry::global()
        .decode("com.example.nobody.knows", "1.0", "{}")
        .unwrap_err();
    assert!(matches!(err, RegistryError::UnknownType { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("`com.example.nobody.knows`"), "{text}");
    assert!(
        text.contains("register::<T>()"),
        "says how to fix it: {text}"
    );
}

/// A forged type from a stored row must not break the log line or header its error ends up in.
#[test]
fn an_unknown_type_with_control_characters_is_escaped_in_the_error() {
    let err = Registry::global()
        .decode("com.example.x\r\nce-type: evil", "1.0\n", "{}")
        .unwrap_err();
    let text = err.to_string();
    assert!(!text.contains(['\r', '\n']), "{text:?}");
    assert!(
        text.contains(r"`com.example.x\r\nce-type: evil` (version 1.0\n)"),
        "{text}"
    );
}

#[test]
fn unknown_version_lists_the_registered_ones() {
    let err = Registry::global()
        .decode("com.example.user.created", "9.9", "{}")
        .unwrap_err();
    match &err {
        RegistryError::UnknownVersion { known, .. } => {
            let mut known = known.clone();
            known.sort();
            assert_eq!(known, ["1.0", "2.0"]);
        }
        other => panic!("expected UnknownVersion, got {other:?}"),
    }
    assert!(err.to_string().contains("registered versions: "), "{err}");
}

#[test]
fn json_that_no_longer_fits_is_an_error_naming_type_and_cause() {
    for (json, cause) in [
        (r#"{"user_id":"not-a-uuid","email":"x"}"#, "UUID"),
        (r#"{"email":"x"}"#, "missing field `user_id`"),
        ("{not json", "key must be a string"),
    ] {
        let err = Registry::global()
            .decode("com.example.user.created", "1.0", json)
            .unwrap_err();
        let RegistryError::Decode { rust_type, .. } = &err else {
            panic!("expected Decode, got {err:?}");
        };
        assert!(rust_type.ends_with("events::UserCreated"), "{rust_type}");
        let text = err.to_string();
        assert!(text.contains("com.example.user.created"), "{text}");
        assert!(text.contains(cause), "{text} should contain {cause}");
    }
}

#[test]
fn two_types_claiming_one_type_and_version_are_reported_with_both_names() {
    let err = Registry::global().validate().unwrap_err();
    let RegistryError::Conflicts(conflicts) = &err else {
        panic!("expected Conflicts, got {err:?}");
    };
    // This binary holds exactly one deliberate conflict (events::conflict).
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    let names = [conflicts[0].first, conflicts[0].second];
    assert!(
        names.iter().any(|n| n.ends_with("conflict::First")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.ends_with("conflict::Second")),
        "{names:?}"
    );

    // Decoding the contested key refuses to guess.
    let err = Registry::global()
        .decode("com.example.conflict.made", "1.0", r#"{"id":1}"#)
        .unwrap_err();
    assert!(matches!(err, RegistryError::Conflict(_)), "{err:?}");
    assert!(err.to_string().contains("registered by both"), "{err}");

    // Other keys are unaffected.
    assert!(
        Registry::global()
            .get("com.example.user.deleted", "1.0")
            .is_ok()
    );
}

#[test]
fn explicit_registration_is_the_fallback_and_is_idempotent() {
    let registry = Registry::new();
    assert!(registry.is_empty());
    registry.register::<UserDeleted>().unwrap();
    registry.register::<UserDeleted>().unwrap();
    assert_eq!(registry.len(), 1);
    assert!(registry.validate().is_ok());
    let id = Uuid::now_v7();
    let event = registry
        .decode(
            "com.example.user.deleted",
            "1.0",
            &format!(r#"{{"user_id":"{id}"}}"#),
        )
        .unwrap();
    assert_eq!(event.aggregate_id(), id.to_string());

    // The same type found both through inventory and explicitly is one entry, not a conflict.
    let from_inventory = Registry::from_inventory();
    let before = from_inventory.len();
    from_inventory.register::<UserDeleted>().unwrap();
    assert_eq!(from_inventory.len(), before);
}

#[test]
fn explicit_registration_of_a_second_type_under_a_taken_key_fails() {
    let registry = Registry::new();
    registry.register::<conflict::First>().unwrap();
    let err = registry.register::<conflict::Second>().unwrap_err();
    assert!(err.to_string().contains("conflict::First"), "{err}");
    assert!(err.to_string().contains("conflict::Second"), "{err}");
    assert!(registry.validate().is_err());
}

#[test]
fn entries_list_every_registered_type_sorted() {
    let entries = Registry::global().entries();
    let keys: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e.meta.event_type, e.meta.data_version))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    for expected in [
        ("com.example.peer.pinged", "1.0"),
        ("com.example.user.created", "1.0"),
        ("com.example.user.created", "2.0"),
        ("com.example.user.deleted", "1.0"),
        ("com.example.conflict.made", "1.0"),
    ] {
        assert!(
            keys.contains(&expected),
            "{expected:?} missing from {keys:?}"
        );
    }
    assert_eq!(Registry::global().len(), entries.len());
}
