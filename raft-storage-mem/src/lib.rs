//! In-memory log store (being written).
