//! The event registry: from a stored row's `event_type` and data version back to the Rust type.
//!
//! `#[derive(OutboxEvent)]` registers every event type through [`inventory`], so a program knows all its event
//! types without a hand-kept map, across all the crates it links. [`Registry::global`] is built from those
//! registrations the first time it is used.
//!
//! Two things can go wrong, and both are reported rather than guessed around:
//! - Two Rust types claim the same type and version. Decoding that key fails with an error naming both, and
//!   [`Registry::validate`] (call it in a test; the relay calls it at start) reports every such conflict.
//! - The linker dropped a crate nothing referenced, and its registrations with it. [`Registry::register`] adds
//!   a type explicitly; [`Registry::entries`] shows what is registered.
//!
//! ```standalone_crate
//! # use outbox::{OutboxEvent, registry::Registry};
//! # use serde::{Deserialize, Serialize};
//! #[derive(Debug, Serialize, Deserialize, OutboxEvent)]
//! #[outbox(type = "com.example.user.renamed", source = "/users")]
//! struct UserRenamed {
//!     #[outbox(aggregate_id)]
//!     user_id: u64,
//!     name: String,
//! }
//!
//! let registry = Registry::global();
//! registry.validate()?;
//! let event = registry.decode("com.example.user.renamed", "1.0", r#"{"user_id":1,"name":"Ada"}"#)?;
//! assert_eq!(event.downcast_ref::<UserRenamed>().map(|e| e.name.as_str()), Some("Ada"));
//! # Ok::<(), outbox::registry::RegistryError>(())
//! ```

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::sync::{LazyLock, PoisonError, RwLock};

use crate::event::{DynEvent, EventMeta, OutboxEvent, SchemaFn};

type DecodeFn = fn(&str) -> Result<Box<dyn DynEvent>, serde_json::Error>;

/// One event type's entry in the registry, as submitted by `#[derive(OutboxEvent)]`.
#[derive(Clone, Copy)]
pub struct Registration {
    info: EventInfo,
    decode: DecodeFn,
    type_id: fn() -> TypeId,
    schema: Option<SchemaFn>,
}

impl Registration {
    /// The registration of `E`. `rust_type` is its path, as the derive spells it (`module::Type`).
    pub const fn of<E: OutboxEvent>(rust_type: &'static str) -> Self {
        Self {
            info: EventInfo {
                meta: EventMeta {
                    event_type: E::EVENT_TYPE,
                    source: E::SOURCE,
                    data_version: E::DATA_VERSION,
                    aggregate_type: E::AGGREGATE_TYPE,
                    destination: E::DESTINATION,
                    dataschema: E::DATASCHEMA,
                    extensions: E::EXTENSIONS,
                },
                rust_type,
            },
            decode: decode_as::<E>,
            type_id: TypeId::of::<E>,
            schema: E::JSON_SCHEMA,
        }
    }

    /// What this registration declares.
    pub fn info(&self) -> EventInfo {
        self.info
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

fn decode_as<E: OutboxEvent>(json: &str) -> Result<Box<dyn DynEvent>, serde_json::Error> {
    E::from_json(json).map(|event| Box::new(event) as Box<dyn DynEvent>)
}

inventory::collect!(Registration);

/// What the registry knows of one event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventInfo {
    /// The type's per-type facts.
    pub meta: EventMeta,
    /// The Rust type's path, e.g. `my_service::events::UserCreated`.
    pub rust_type: &'static str,
}

/// Event types by CloudEvents `type` and data version.
pub struct Registry {
    index: RwLock<Index>,
}

#[derive(Default)]
struct Index {
    /// Few versions per type, so a small vector beats a second map.
    by_type: HashMap<&'static str, Vec<Registration>>,
    conflicts: Vec<Conflict>,
}

static GLOBAL: LazyLock<Registry> = LazyLock::new(|| {
    let registry = Registry::from_inventory();
    let index = registry.read();
    tracing::debug!(
        target: "outbox.registry",
        registered = index.by_type.values().map(Vec::len).sum::<usize>(),
        "event registry built"
    );
    for conflict in &index.conflicts {
        tracing::error!(target: "outbox.registry", %conflict, "conflicting event registrations");
    }
    drop(index);
    registry
});

impl Registry {
    /// The program's registry: every type registered by `#[derive(OutboxEvent)]` in any linked crate, plus
    /// those added with [`register`](Self::register).
    pub fn global() -> &'static Registry {
        &GLOBAL
    }

    /// An empty registry, for tests and programs that want to control exactly which types they decode.
    pub fn new() -> Self {
        Self {
            index: RwLock::new(Index::default()),
        }
    }

    /// A new registry holding every type registered through `inventory`.
    pub fn from_inventory() -> Self {
        let registry = Self::new();
        {
            let mut index = registry.write();
            for registration in inventory::iter::<Registration> {
                index.insert(*registration);
            }
        }
        registry
    }

    /// Registers `E` explicitly: the fallback for a crate the linker dropped because nothing referenced it.
    ///
    /// Registering a type that is already registered does nothing. Registering a second Rust type under a type
    /// and version another one holds is an error, and is also reported by [`validate`](Self::validate).
    pub fn register<E: OutboxEvent>(&self) -> Result<(), RegistryError> {
        self.register_entry(Registration::of::<E>(std::any::type_name::<E>()))
    }

    /// Registers an entry made by [`Registration::of`].
    pub fn register_entry(&self, registration: Registration) -> Result<(), RegistryError> {
        match self.write().insert(registration) {
            Some(conflict) => Err(RegistryError::Conflict(conflict)),
            None => Ok(()),
        }
    }

    /// Checks that no type and version is claimed by two Rust types. Call it in a test, or at start-up.
    pub fn validate(&self) -> Result<(), RegistryError> {
        let index = self.read();
        if index.conflicts.is_empty() {
            Ok(())
        } else {
            Err(RegistryError::Conflicts(index.conflicts.clone()))
        }
    }

    /// The registration of `event_type` at `data_version`.
    pub fn get(&self, event_type: &str, data_version: &str) -> Result<EventInfo, RegistryError> {
        self.lookup(event_type, data_version).map(|r| r.info)
    }

    /// The JSON Schema (draft-07) of the payload of `event_type` at `data_version`, or `None` if the type was
    /// registered without one (see [`OutboxEvent::JSON_SCHEMA`]).
    pub fn schema(
        &self,
        event_type: &str,
        data_version: &str,
    ) -> Result<Option<serde_json::Value>, RegistryError> {
        self.lookup(event_type, data_version)
            .map(|r| r.schema.map(|schema| schema()))
    }

    /// Whether `event_type` at `data_version` is registered with a JSON Schema (without rendering it).
    pub fn has_schema(&self, event_type: &str, data_version: &str) -> bool {
        self.lookup(event_type, data_version)
            .is_ok_and(|r| r.schema.is_some())
    }

    /// Turns a stored event's JSON back into its Rust type, chosen by `event_type` and `data_version`.
    ///
    /// Never panics: an unknown type or version, a conflicting registration, or JSON that no longer fits the
    /// struct is an error that names the type and the cause.
    pub fn decode(
        &self,
        event_type: &str,
        data_version: &str,
        json: &str,
    ) -> Result<Box<dyn DynEvent>, RegistryError> {
        let registration = self.lookup(event_type, data_version)?;
        (registration.decode)(json).map_err(|source| RegistryError::Decode {
            event_type: event_type.to_owned(),
            data_version: data_version.to_owned(),
            rust_type: registration.info.rust_type,
            source,
        })
    }

    /// Every registered type, sorted by type and version. The relay logs this list at start.
    pub fn entries(&self) -> Vec<EventInfo> {
        let mut entries: Vec<EventInfo> = self
            .read()
            .by_type
            .values()
            .flatten()
            .map(|r| r.info)
            .collect();
        entries.sort_by_key(|info| (info.meta.event_type, info.meta.data_version));
        entries
    }

    /// How many type-and-version pairs are registered.
    pub fn len(&self) -> usize {
        self.read().by_type.values().map(Vec::len).sum()
    }

    /// Whether nothing is registered (in the global registry, a sign the linker dropped the events' crate).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lookup(&self, event_type: &str, data_version: &str) -> Result<Registration, RegistryError> {
        let index = self.read();
        if let Some(conflict) = index
            .conflicts
            .iter()
            .find(|c| c.event_type == event_type && c.data_version == data_version)
        {
            return Err(RegistryError::Conflict(conflict.clone()));
        }
        let versions = index
            .by_type
            .get(event_type)
            .ok_or_else(|| RegistryError::UnknownType {
                event_type: event_type.to_owned(),
                data_version: data_version.to_owned(),
                registered: index.by_type.values().map(Vec::len).sum(),
            })?;
        versions
            .iter()
            .find(|r| r.info.meta.data_version == data_version)
            .copied()
            .ok_or_else(|| RegistryError::UnknownVersion {
                event_type: event_type.to_owned(),
                data_version: data_version.to_owned(),
                known: versions
                    .iter()
                    .map(|r| r.info.meta.data_version.to_owned())
                    .collect(),
            })
    }

    // A panic while holding the lock cannot leave the index half-written (inserts are single pushes), so a
    // poisoned lock is still safe to use.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("entries", &self.entries())
            .field("conflicts", &self.read().conflicts)
            .finish()
    }
}

impl Index {
    /// Adds `registration`; returns the conflict if another Rust type already holds its type and version.
    fn insert(&mut self, registration: Registration) -> Option<Conflict> {
        let meta = registration.info.meta;
        let versions = self.by_type.entry(meta.event_type).or_default();
        match versions
            .iter()
            .find(|r| r.info.meta.data_version == meta.data_version)
        {
            None => {
                versions.push(registration);
                None
            }
            // The same type registered twice (by the derive, then explicitly) is no conflict.
            Some(existing) if (existing.type_id)() == (registration.type_id)() => None,
            Some(existing) => {
                let conflict = Conflict {
                    event_type: meta.event_type,
                    data_version: meta.data_version,
                    first: existing.info.rust_type,
                    second: registration.info.rust_type,
                };
                if !self.conflicts.contains(&conflict) {
                    self.conflicts.push(conflict.clone());
                }
                Some(conflict)
            }
        }
    }
}

/// Two Rust types registered under the same event type and version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The contested event type.
    pub event_type: &'static str,
    /// The contested data version.
    pub data_version: &'static str,
    /// The Rust type registered first.
    pub first: &'static str,
    /// The Rust type that tried to register the same key.
    pub second: &'static str,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "event type `{}` version {} is registered by both `{}` and `{}`: give one of them another `type` or \
             `version`",
            self.event_type, self.data_version, self.first, self.second
        )
    }
}

/// Why the registry could not find or decode an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// No Rust type is registered under this event type.
    // Type and version come from a stored row: escaped, so a forged one cannot break a log line or header.
    #[error(
        "unknown event type `{}` (version {}): no Rust type is registered for it \
         ({registered} types are); if its crate is linked but nothing in the program references it, register it \
         with `Registry::global().register::<T>()`",
        .event_type.escape_debug(), .data_version.escape_debug()
    )]
    UnknownType {
        /// The type that was asked for.
        event_type: String,
        /// The version that was asked for.
        data_version: String,
        /// How many types the registry holds.
        registered: usize,
    },
    /// The event type is registered, but not at this version.
    #[error(
        "event type `{event_type}` has no registered version {}; registered versions: {}",
        .data_version.escape_debug(), known.join(", ")
    )]
    UnknownVersion {
        /// The type that was asked for.
        event_type: String,
        /// The version that was asked for.
        data_version: String,
        /// The versions that are registered.
        known: Vec<String>,
    },
    /// Two Rust types claim this type and version.
    #[error("{0}")]
    Conflict(Conflict),
    /// [`Registry::validate`] found conflicting registrations.
    #[error(
        "{} conflicting event registration(s): {}",
        .0.len(),
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    Conflicts(Vec<Conflict>),
    /// A row was asked for as a Rust type that is not the one of its type and version.
    #[error(
        "stored event `{event_type}` version {} is not a `{requested}`",
        .data_version.escape_debug()
    )]
    WrongType {
        /// The event type of the row.
        event_type: String,
        /// The data version of the row.
        data_version: String,
        /// The Rust type that was asked for.
        requested: &'static str,
    },
    /// The stored JSON does not decode into the registered Rust type.
    #[error(
        "stored event `{event_type}` version {data_version} does not decode into `{rust_type}`: {source}"
    )]
    Decode {
        /// The event type of the row.
        event_type: String,
        /// The data version of the row.
        data_version: String,
        /// The Rust type it should have decoded into.
        rust_type: &'static str,
        /// What serde_json said.
        #[source]
        source: serde_json::Error,
    },
}
