//! `--to-datetime`: a date and time, or milliseconds since the epoch, turned into milliseconds
//! since the epoch (what ListOffsets takes).
//!
//! Accepted: `YYYY-MM-DDTHH:MM[:SS[.fraction]]` (a space may replace the `T`), optionally
//! followed by `Z` or an offset (`+HH:MM`, `-HHMM`, `+HH`), or a non-negative integer of
//! milliseconds. A time without an offset is UTC, as in Kafka's kafka-consumer-groups
//! (its `Utils.getDateTime` appends `Z`), not the local time zone. Parsing is jiff's ISO 8601
//! (Temporal) parser, which checks the calendar: 2026-02-31 and 2025-02-29 are refused.
//! Fractions below a millisecond are dropped (Kafka timestamps are milliseconds).
//!
//! What this module must never do: turn text into a time it does not denote (an impossible
//! date, a time zone name it cannot resolve), or answer a time before 1970: ListOffsets reads
//! negative timestamps as the special requests "latest" (-1) and "earliest" (-2).
//!
//! ```
//! use shardlog::cli::datetime::parse_epoch_ms;
//! assert_eq!(parse_epoch_ms("1970-01-01T00:00:01.5"), Ok(1_500));
//! assert!(parse_epoch_ms("2026-02-31T00:00:00").is_err());
//! ```

use jiff::fmt::temporal::Pieces;
use jiff::tz::Offset;

/// What the accepted forms look like, for error messages.
const FORMS: &str =
    "YYYY-MM-DDTHH:MM[:SS[.fff]] with an optional Z or +HH:MM, or milliseconds since the epoch";

/// Milliseconds since the epoch of `text` (see the module doc for the forms); the error says
/// what is wrong and what is accepted. Used as clap's value parser of `--to-datetime`.
pub fn parse_epoch_ms(text: &str) -> Result<i64, String> {
    let ms = match text.parse::<i64>() {
        Ok(ms) => ms,
        Err(_) => parse_datetime_ms(text)?,
    };
    if ms < 0 {
        return Err(format!(
            "'{text}' is before 1970-01-01T00:00:00Z; times start at the epoch"
        ));
    }
    Ok(ms)
}

fn parse_datetime_ms(text: &str) -> Result<i64, String> {
    let pieces = Pieces::parse(text)
        .map_err(|e| format!("'{text}' is not a valid date and time ({e}); expected {FORMS}"))?;
    let time = pieces
        .time()
        .ok_or_else(|| format!("'{text}' has no time of day; expected {FORMS}"))?;
    if pieces.time_zone_annotation().is_some() {
        return Err(format!(
            "'{text}': time zone names are not supported; give an offset such as +01:00"
        ));
    }
    // No offset: UTC, as Kafka's tool reads it.
    let offset = pieces
        .offset()
        .map_or(Offset::UTC, |o| o.to_numeric_offset());
    let timestamp = offset
        .to_timestamp(pieces.date().to_datetime(time))
        .map_err(|e| format!("'{text}' is out of range: {e}"))?;
    Ok(timestamp.as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-02-29T12:34:56.789Z in milliseconds since the epoch.
    const LEAP_DAY_MS: i64 = 1_709_210_096_789;

    #[test]
    fn datetimes_without_an_offset_are_utc() {
        assert_eq!(parse_epoch_ms("1970-01-01T00:00:00"), Ok(0));
        assert_eq!(parse_epoch_ms("1970-01-01T00:00:01.5"), Ok(1_500));
        assert_eq!(parse_epoch_ms("2024-02-29T12:34:56.789"), Ok(LEAP_DAY_MS));
        assert_eq!(parse_epoch_ms("2024-02-29 12:34:56.789"), Ok(LEAP_DAY_MS));
        assert_eq!(parse_epoch_ms("2024-02-29T12:34"), Ok(LEAP_DAY_MS - 56_789));
    }

    #[test]
    fn z_and_numeric_offsets_move_the_instant() {
        assert_eq!(parse_epoch_ms("2024-02-29T12:34:56.789Z"), Ok(LEAP_DAY_MS));
        for shifted in [
            "2024-02-29T14:34:56.789+02:00",
            "2024-02-29T14:34:56.789+0200",
            "2024-02-29T14:34:56.789+02",
            "2024-02-29T10:04:56.789-02:30",
        ] {
            assert_eq!(parse_epoch_ms(shifted), Ok(LEAP_DAY_MS), "{shifted}");
        }
    }

    #[test]
    fn fractions_below_a_millisecond_are_dropped() {
        assert_eq!(parse_epoch_ms("1970-01-01T00:00:00.123999999Z"), Ok(123));
    }

    #[test]
    fn milliseconds_since_the_epoch_pass_through() {
        assert_eq!(parse_epoch_ms("1709210096789"), Ok(LEAP_DAY_MS));
        assert_eq!(parse_epoch_ms("0"), Ok(0));
    }

    #[test]
    fn impossible_dates_and_times_are_refused_naming_the_input() {
        for bad in [
            "2026-02-31T00:00:00",
            "2025-02-29T00:00:00",
            "2026-04-31T00:00:00Z",
            "2024-13-01T00:00:00",
            "2024-01-01T24:00:01",
            "2024-01-01T12:60:00",
        ] {
            let error = parse_epoch_ms(bad).unwrap_err();
            assert!(error.contains(bad), "{bad}: {error}");
        }
        let error = parse_epoch_ms("2026-02-31T00:00:00").unwrap_err();
        assert!(error.contains("day"), "{error}");
    }

    #[test]
    fn other_text_is_refused_saying_what_is_accepted() {
        for bad in [
            "",
            "yesterday",
            "2024-02-29",
            "12:00:00",
            "2024-02-29T12:00:00 UTC",
        ] {
            let error = parse_epoch_ms(bad).unwrap_err();
            assert!(error.contains("expected"), "{bad:?}: {error}");
        }
        let error = parse_epoch_ms("2024-02-29T12:00:00+01:00[Europe/Paris]").unwrap_err();
        assert!(error.contains("time zone names"), "{error}");
    }

    #[test]
    fn times_before_the_epoch_are_refused_since_listoffsets_reads_them_as_special() {
        for bad in [
            "-1",
            "-2",
            "1969-12-31T23:59:59.999Z",
            "1970-01-01T00:30:00+01:00",
        ] {
            let error = parse_epoch_ms(bad).unwrap_err();
            assert!(error.contains("1970"), "{bad}: {error}");
        }
    }
}
