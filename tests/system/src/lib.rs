//! Citadel system-test harness (being written).
