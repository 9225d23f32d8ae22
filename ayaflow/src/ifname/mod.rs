//! Interface names as small copyable ids carried by every row ([`InterfaceId`]), and which
//! kernel ifindex is which name ([`IfindexNames`]), for decoding the kernel's keys. A leaf: the
//! kernel side (`ebpf`), the flow types, storage and export all use it; the interface follower
//! (`interfaces`) fills it.

mod intern;

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

pub use intern::{InterfaceId, MAX_NAMES, OVERFLOW_NAME};

/// Which interface id each kernel ifindex is, shared by whoever decodes kernel keys (the ring
/// reader, the flow sweep) and the link follower that fills it; and back, the index a name has
/// now (for IPFIX records, which name interfaces by index).
///
/// An ifindex stays mapped after its interface goes: events read after the removal still
/// carry it (the kernel hands out indexes cyclically, so it is not reused soon). Entries are
/// bounded by [`MAX_NAMES`]-many interfaces: the oldest are dropped past it.
#[derive(Clone, Debug, Default)]
pub struct IfindexNames(Arc<RwLock<Maps>>);

#[derive(Debug, Default)]
struct Maps {
    by_index: HashMap<u32, InterfaceId>,
    /// The latest index of each name.
    by_id: HashMap<InterfaceId, u32>,
}

impl IfindexNames {
    /// Records that `ifindex` is interface `name`.
    pub fn set(&self, ifindex: u32, name: &str) -> InterfaceId {
        let id = InterfaceId::intern(name);
        let mut m = self.0.write().unwrap_or_else(|e| e.into_inner());
        if m.by_index.len() >= MAX_NAMES && !m.by_index.contains_key(&ifindex) {
            // Indexes grow: the smallest ones are the oldest interfaces.
            if let Some(&oldest) = m.by_index.keys().min()
                && let Some(old) = m.by_index.remove(&oldest)
                && m.by_id.get(&old) == Some(&oldest)
            {
                m.by_id.remove(&old);
            }
        }
        m.by_index.insert(ifindex, id);
        m.by_id.insert(id, ifindex);
        id
    }

    /// The id of `ifindex`: its name, or `if<ifindex>` for an index never recorded (a hook
    /// left attached by a pinned agent, an interface the agent has not seen yet).
    pub fn get(&self, ifindex: u32) -> InterfaceId {
        let known = self
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_index
            .get(&ifindex)
            .copied();
        known.unwrap_or_else(|| self.set(ifindex, &format!("if{ifindex}")))
    }

    /// The index interface `id` has (or last had), if it was seen.
    pub fn index_of(&self, id: InterfaceId) -> Option<u32> {
        let m = self.0.read().unwrap_or_else(|e| e.into_inner());
        m.by_id.get(&id).copied()
    }

    /// A resolver for a batch of keys: it asks the shared map once per distinct ifindex.
    pub fn reader(&self) -> IfindexReader<'_> {
        IfindexReader {
            names: self,
            seen: Vec::new(),
        }
    }
}

/// See [`IfindexNames::reader`].
pub struct IfindexReader<'a> {
    names: &'a IfindexNames,
    /// The indexes of this batch so far: a handful, so a scan beats a hash.
    seen: Vec<(u32, InterfaceId)>,
}

impl IfindexReader<'_> {
    /// As [`IfindexNames::get`].
    pub fn get(&mut self, ifindex: u32) -> InterfaceId {
        if let Some(&(_, id)) = self.seen.iter().find(|(i, _)| *i == ifindex) {
            return id;
        }
        let id = self.names.get(ifindex);
        if self.seen.len() < 64 {
            self.seen.push((ifindex, id));
        }
        id
    }
}
