//! The agent's one lock helper.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, recovering the data if a thread panicked while holding it: every structure behind
/// the agent's mutexes (the connection table, the aggregator, the storage queue) is consistent
/// between single updates, so a panic in one caller leaves data the others can still use.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
