//! Reading layered values through the typed key constants, each read counted.

use std::collections::BTreeMap;

use crate::config::*;

/// Reads layered values through the typed key constants, counting each read, so a test
/// can check that every declared key is consumed exactly once.
pub(crate) struct Reader<'a> {
    l: &'a Layered,
    reads: std::cell::RefCell<BTreeMap<&'static str, u32>>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(l: &'a Layered) -> Reader<'a> {
        Reader {
            l,
            reads: Default::default(),
        }
    }

    /// The value of `key`. A key without a value is `None` for optional types; for any
    /// other it cannot happen (every such key has a default, parsed at start): a
    /// declaration error, which the tests' default configuration would hit at once.
    pub(crate) fn get<T: FromValue>(&self, key: &Key<T>) -> T {
        let name = key.name();
        *self.reads.borrow_mut().entry(name).or_default() += 1;
        T::from_value(self.l.get(name).map(|(v, _)| v)).unwrap_or_else(|| {
            panic!("configuration key {name} has no value of its type and no default: fix its declaration in config/keys.rs")
        })
    }

    /// Where `key`'s value came from, if it is set (not counted as a read).
    pub(crate) fn source<T>(&self, key: &Key<T>) -> Option<Source> {
        self.l.get(key.name()).map(|(_, s)| s.clone())
    }

    /// How many times each key was read.
    pub(crate) fn reads(&self) -> BTreeMap<&'static str, u32> {
        self.reads.borrow().clone()
    }
}
