//! Criterion benches of shardlog hot paths live in benches/benches/.
