//! start-model (being written).
