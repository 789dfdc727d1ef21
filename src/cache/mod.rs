//! The answer cache: keys, entries, single-flight and the storage seam.

pub mod store;
