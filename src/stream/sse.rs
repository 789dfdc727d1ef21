//! Incremental server-sent-events parser: pure, no I/O.
