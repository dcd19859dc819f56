//! storage-setup (being written).
