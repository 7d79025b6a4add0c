//! Time: the wall clock in milliseconds, durations as operators write them
//! (`24h`, `30m`), and UTC timestamps as reports, set ids and audit pages
//! print them (formatted by `chrono`).

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Parses `24h`, `30m`, `90s`, `2d` or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 24h, 30m, 90s or 2d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (s, m, h, d)")),
    };
    if secs.is_nan() || secs < 0.0 {
        return Err(format!("'{s}' must not be negative"));
    }
    if !secs.is_finite() || secs > 1e15 {
        return Err(format!("'{s}' is too long"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A point in time given on a command line, as ms since the epoch: an
/// RFC 3339 time (`2026-12-01T09:30:00Z`), a UTC date (`2026-12-01`), or an
/// age (`7d`, `12h`: that long before `now_ms`).
pub fn parse_time(s: &str, now_ms: i64) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc().timestamp_millis());
    }
    match parse_duration(s) {
        Ok(age) => Ok(now_ms - age.as_millis() as i64),
        Err(_) => Err(format!(
            "'{s}' is not a time: give an RFC 3339 time (2026-12-01T09:30:00Z), a date (2026-12-01) or an age (7d, 12h)"
        )),
    }
}

fn utc(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// `YYYYMMDDTHHMMSSmmmZ` (UTC): backup set ids, which sort by time.
pub fn format_id(ms: i64) -> String {
    utc(ms).format("%Y%m%dT%H%M%S%3fZ").to_string()
}

/// `YYYY-MM-DD HH:MM:SSZ` (UTC), for reports.
pub fn format_time(ms: i64) -> String {
    utc(ms).format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// `YYYY-MM-DD HH:00Z` (UTC): the hour a time falls in.
pub fn format_hour(ms: i64) -> String {
    utc(ms).format("%Y-%m-%d %H:00Z").to_string()
}

/// Days since the epoch, UTC (retention by day and week).
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

/// Days since 1970-01-01 to (year, month) (proleptic Gregorian, UTC).
pub fn civil(days: i64) -> (i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m)
}

/// Days since 1970-01-01 of the first day of (year, month).
pub fn month_start(y: i64, m: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_on_a_command_line() {
        assert_eq!(parse_time("1970-01-02", 0), Ok(86_400_000));
        assert_eq!(parse_time("1970-01-01T00:00:01Z", 0), Ok(1_000));
        assert_eq!(parse_time("1970-01-01T01:00:01+01:00", 0), Ok(1_000));
        assert_eq!(parse_time("2h", 10_000_000), Ok(10_000_000 - 7_200_000));
        assert!(parse_time("yesterday", 0).unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn calendar() {
        // 2026-12-06 is day 20793 of December 2026, which starts on day 20788; January 2027 on 20819.
        assert_eq!(civil(20_793), (2026, 12));
        assert_eq!(month_start(2026, 12), 20_788);
        assert_eq!(month_start(2027, 1), 20_819);
        assert_eq!(month_start(2024, 2), 19_754);
        assert_eq!(civil(0), (1970, 1));
        assert_eq!(civil(month_start(2024, 2) + 28), (2024, 2), "29 February 2024");
    }

    #[test]
    fn timestamps_are_utc_and_sortable() {
        assert_eq!(format_id(0), "19700101T000000000Z");
        // 2026-11-24 08:36:09.123 UTC
        assert_eq!(format_id(1_795_509_369_123), "20261124T083609123Z");
        assert_eq!(format_time(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(format_hour(1_795_435_200_000), "2026-11-23 12:00Z");
        assert!(format_id(1_000) < format_id(2_000));
        assert_eq!(day_of(86_400_000 * 3 + 5), 3);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert!(parse_duration("5w").is_err());
        assert!(
            parse_duration(&"9".repeat(400)).is_err(),
            "no panic on an infinite duration"
        );
        assert!(parse_duration("h").is_err());
    }
}
