//! health-monitor (being written).
