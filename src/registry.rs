//! The Deferreds whose futures are still in flight. Reactor thread only.
//!
//! A task does not hold its Deferred: Python objects stay on the reactor thread.
//! The task carries a [`Key`] instead, and the completion job looks the Deferred up
//! here. An entry leaves the registry exactly once — on completion, cancellation or
//! shutdown — and whoever removes it is the one who fires the Deferred. That is what
//! makes "fires exactly once" hold when a cancel races a completion.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use futures_util::future::AbortHandle;
use pyo3::prelude::*;

/// Names one in-flight Deferred. The address is unique while the entry holds the
/// Deferred alive; the task number guards against a later Deferred reusing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Key {
    address: usize,
    task: u64,
}

pub(crate) struct Entry {
    pub deferred: Py<PyAny>,
    pub abort: AbortHandle,
    task: u64,
}

/// Hashes object addresses: they are distinct already, so one multiply mixes them
/// (SipHash's resistance to chosen keys is not needed for our own pointers). The
/// shift drops the alignment zeros; the fold spreads the high bits into the low
/// ones the table indexes by.
#[derive(Default, Clone, Copy)]
pub(crate) struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_usize(&mut self, address: usize) {
        let x = ((address as u64) >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = x ^ (x >> 32);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Default)]
pub(crate) struct Registry {
    entries: HashMap<usize, Entry, BuildHasherDefault<AddressHasher>>,
    next_task: u64,
}

impl Registry {
    pub(crate) fn insert(&mut self, deferred: Py<PyAny>, abort: AbortHandle) -> Key {
        self.next_task += 1;
        let key = Key {
            address: deferred.as_ptr() as usize,
            task: self.next_task,
        };
        self.entries.insert(
            key.address,
            Entry {
                deferred,
                abort,
                task: key.task,
            },
        );
        key
    }

    /// Removes the entry of a finished task, unless it already left.
    pub(crate) fn take(&mut self, key: Key) -> Option<Entry> {
        match self.entries.get(&key.address) {
            Some(entry) if entry.task == key.task => self.entries.remove(&key.address),
            _ => None,
        }
    }

    /// Removes the entry of `deferred` (it is being cancelled), unless it already left.
    pub(crate) fn take_deferred(&mut self, deferred: &Bound<'_, PyAny>) -> Option<Entry> {
        let address = deferred.as_ptr() as usize;
        match self.entries.get(&address) {
            Some(entry) if entry.deferred.is(deferred) => self.entries.remove(&address),
            _ => None,
        }
    }

    pub(crate) fn take_all(&mut self) -> Vec<Entry> {
        self.entries.drain().map(|(_, entry)| entry).collect()
    }

    /// The entries, for Python's garbage collector.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(py: Python<'_>) -> Py<PyAny> {
        // A fresh object of its own address, as a Deferred would be.
        py.eval(c"object()", None, None).unwrap().unbind()
    }

    #[test]
    fn an_entry_leaves_exactly_once_whoever_takes_it() {
        Python::initialize();
        Python::attach(|py| {
            let mut registry = Registry::default();
            let (abort, _) = AbortHandle::new_pair();
            let d = object(py);
            let key = registry.insert(d.clone_ref(py), abort);
            assert_eq!(registry.len(), 1);
            // Cancellation takes it first: the completion then finds nothing.
            assert!(registry.take_deferred(d.bind(py)).is_some());
            assert!(registry.take(key).is_none());
            assert!(registry.take_deferred(d.bind(py)).is_none());
            assert_eq!(registry.len(), 0);

            // Completion first: cancellation then finds nothing.
            let (abort, _) = AbortHandle::new_pair();
            let key = registry.insert(d.clone_ref(py), abort);
            assert!(registry.take(key).is_some());
            assert!(registry.take_deferred(d.bind(py)).is_none());
            assert!(registry.take(key).is_none());
        });
    }

    #[test]
    fn a_reused_address_is_not_taken_by_the_old_key() {
        Python::initialize();
        Python::attach(|py| {
            let mut registry = Registry::default();
            let d = object(py);
            let (abort, _) = AbortHandle::new_pair();
            let old = registry.insert(d.clone_ref(py), abort);
            assert!(registry.take(old).is_some());
            // A later Deferred at the same address (here: the same object again).
            let (abort, _) = AbortHandle::new_pair();
            let new = registry.insert(d.clone_ref(py), abort);
            assert_ne!(old, new);
            assert!(registry.take(old).is_none(), "a stale key took a new entry");
            assert_eq!(registry.len(), 1);
            // Another object at another address is not found by this one's lookup.
            assert!(registry.take_deferred(object(py).bind(py)).is_none());
            assert!(registry.take(new).is_some());
        });
    }

    #[test]
    fn shutdown_takes_every_entry() {
        Python::initialize();
        Python::attach(|py| {
            let mut registry = Registry::default();
            let keep: Vec<Py<PyAny>> = (0..100).map(|_| object(py)).collect();
            let keys: Vec<Key> = keep
                .iter()
                .map(|d| registry.insert(d.clone_ref(py), AbortHandle::new_pair().0))
                .collect();
            assert_eq!(registry.iter().count(), 100);
            assert_eq!(registry.take_all().len(), 100);
            assert_eq!(registry.len(), 0);
            assert!(keys.into_iter().all(|key| registry.take(key).is_none()));
        });
    }
}
