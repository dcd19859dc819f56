//! gpu-optimize (being written).
