//! `--to-datetime`: a date and time, or milliseconds since the epoch, as milliseconds since
//! the epoch (what ListOffsets takes). The hand-written parser moved from `groups/admin.rs`.
//!
//! What this module must never do: turn text into a time it does not denote.

/// Parse `YYYY-MM-DDTHH:MM:SS[.fff][Z|±HH:MM]` (UTC without a zone) or epoch milliseconds.
pub fn parse_epoch_ms(text: &str) -> Result<i64, String> {
    let bad = || format!("--to-datetime: '{text}' is not YYYY-MM-DDTHH:MM:SS[.mmm][Z|+HH:MM]");
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let (date, time) = text.split_once(['T', ' ']).ok_or_else(bad)?;
    let mut date_parts = date.split('-');
    let next_num = |it: &mut std::str::Split<'_, char>| -> Result<i64, String> {
        it.next().ok_or_else(bad)?.parse::<i64>().map_err(|_| bad())
    };
    let year = next_num(&mut date_parts)?;
    let month = next_num(&mut date_parts)?;
    let day = next_num(&mut date_parts)?;
    // Split off the zone: Z, or the last '+' / '-' in the time part.
    let (clock, offset_minutes) = if let Some(clock) = time.strip_suffix('Z') {
        (clock, 0)
    } else if let Some(i) = time.rfind(['+', '-']) {
        let (clock, zone) = time.split_at(i);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let (h, m) = zone[1..].split_once(':').unwrap_or((&zone[1..], "0"));
        let h: i64 = h.parse().map_err(|_| bad())?;
        let m: i64 = m.parse().map_err(|_| bad())?;
        (clock, sign * (h * 60 + m))
    } else {
        (time, 0)
    };
    let (hms, fraction) = clock.split_once('.').unwrap_or((clock, ""));
    let mut clock_parts = hms.split(':');
    let hour = next_num(&mut clock_parts)?;
    let minute = next_num(&mut clock_parts)?;
    let second = clock_parts
        .next()
        .map_or(Ok(0), |s| s.parse::<i64>().map_err(|_| bad()))?;
    let millis = if fraction.is_empty() {
        0
    } else {
        let digits: String = fraction.chars().chain("000".chars()).take(3).collect();
        digits.parse::<i64>().map_err(|_| bad())?
    };
    let valid = (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && (0..24).contains(&hour)
        && (0..60).contains(&minute)
        && (0..=60).contains(&second);
    if !valid {
        return Err(bad());
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Ok(seconds * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_parse_to_epoch_milliseconds() {
        assert_eq!(parse_epoch_ms("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_epoch_ms("1970-01-01T00:00:01.5").unwrap(), 1_500);
        assert_eq!(
            parse_epoch_ms("2024-02-29T12:34:56.789Z").unwrap(),
            1_709_210_096_789
        );
        assert_eq!(
            parse_epoch_ms("2024-02-29T14:34:56.789+02:00").unwrap(),
            1_709_210_096_789
        );
        assert_eq!(parse_epoch_ms("1709210096789").unwrap(), 1_709_210_096_789);
        assert!(parse_epoch_ms("yesterday").is_err());
        assert!(parse_epoch_ms("2024-13-01T00:00:00").is_err());
    }
}
