//! Executor contract suite (being written).
