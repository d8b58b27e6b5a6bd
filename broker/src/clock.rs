//! Wall-clock time in Kafka's unit (milliseconds since the Unix epoch), read in one place.
//!
//! Only the outer layers read it (request handlers, timers); the group state machine and
//! the log take the time as a parameter, so they are tested without a clock.

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
