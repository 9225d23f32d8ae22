//! Interface names as small copyable ids, so that a connection key, a window row and a stored
//! row carry the interface they were seen on without an allocation per packet.
//!
//! A name is interned once and keeps its id for the agent's life: an interface re-created with
//! the same name (a pod's veth after a restart) continues under it. Ids are bounded
//! ([`MAX_NAMES`]): a node where pods come and go creates a name per pod, so past the bound new
//! names share the id of [`OVERFLOW_NAME`], counted and logged, rather than growing the table.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock, RwLock},
    time::Duration,
};

use crate::ratelimit::RateLimit;

/// Distinct names interned at most: 32 B to 64 B each, so 4 MiB at most.
pub const MAX_NAMES: usize = 65_536;

/// The name shown for interfaces interned past [`MAX_NAMES`].
pub const OVERFLOW_NAME: &str = "(other)";

/// The interface a packet was seen on, by interned name. `InterfaceId::default()` is the
/// empty name: rows stored before interfaces were recorded, and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InterfaceId(u32);

impl InterfaceId {
    /// The empty name: no interface (rows from before interfaces were recorded, the
    /// aggregator's overflow rows, which sum every interface).
    pub const NONE: InterfaceId = InterfaceId(0);
}

struct Interner {
    names: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, u32>,
}

fn interner() -> &'static RwLock<Interner> {
    static INTERNER: OnceLock<RwLock<Interner>> = OnceLock::new();
    INTERNER.get_or_init(|| {
        let empty: Arc<str> = Arc::from("");
        let overflow: Arc<str> = Arc::from(OVERFLOW_NAME);
        RwLock::new(Interner {
            names: vec![empty.clone(), overflow.clone()],
            ids: HashMap::from([(empty, 0), (overflow, 1)]),
        })
    })
}

impl InterfaceId {
    /// The id of `name`, interning it if it is new.
    pub fn intern(name: &str) -> InterfaceId {
        if let Some(&id) = interner()
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .ids
            .get(name)
        {
            return InterfaceId(id);
        }
        let mut i = interner().write().unwrap_or_else(|e| e.into_inner());
        if let Some(&id) = i.ids.get(name) {
            return InterfaceId(id);
        }
        if i.names.len() >= MAX_NAMES {
            static LOG: OnceLock<RateLimit> = OnceLock::new();
            if let Some(held_back) = LOG
                .get_or_init(|| RateLimit::new(Duration::from_secs(60)))
                .ready()
            {
                tracing::warn!(
                    interface = name,
                    held_back,
                    "{MAX_NAMES} interface names seen since start: newer ones are shown as \
                     {OVERFLOW_NAME} (restart the agent to start the count again)"
                );
            }
            return InterfaceId(1);
        }
        let id = i.names.len() as u32;
        let name: Arc<str> = Arc::from(name);
        i.names.push(name.clone());
        i.ids.insert(name, id);
        InterfaceId(id)
    }

    /// The interface's name.
    pub fn name(self) -> Arc<str> {
        let i = interner().read().unwrap_or_else(|e| e.into_inner());
        i.names
            .get(self.0 as usize)
            .cloned()
            .unwrap_or_else(|| Arc::from(""))
    }
}

impl std::fmt::Display for InterfaceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl serde::Serialize for InterfaceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_keeps_its_id_and_the_default_is_empty() {
        let a = InterfaceId::intern("names-test-a");
        assert_eq!(InterfaceId::intern("names-test-a"), a);
        assert_ne!(InterfaceId::intern("names-test-b"), a);
        assert_eq!(&*a.name(), "names-test-a");
        assert_eq!(&*InterfaceId::default().name(), "");
        assert_eq!(InterfaceId::intern(""), InterfaceId::default());
    }
}
