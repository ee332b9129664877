//! UTC calendar arithmetic for release ids and human output, without a date-time dependency.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// (year, month, day, hour, minute, second) in UTC for a Unix timestamp.
pub fn civil_from_unix(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days_from_civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, (rem / 3600) as u32, (rem % 3600 / 60) as u32, (rem % 60) as u32)
}

/// `2026-11-22 03:25:06Z`, for people.
pub fn format_utc(secs: i64) -> String {
    let (y, mo, d, h, mi, s) = civil_from_unix(secs);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}Z")
}

/// `20261122-032506`, the time part of a release id.
pub fn compact_utc(secs: i64) -> String {
    let (y, mo, d, h, mi, s) = civil_from_unix(secs);
    format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}")
}

/// A duration as people write it: a number and a unit, `s`, `m`, `h` or `d` (`30m`, `10d`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("'{text}' is not a duration: write a number and s, m, h or d, like 30m or 10d");
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60).ok_or_else(bad)?,
        "h" => n.checked_mul(3600).ok_or_else(bad)?,
        "d" => n.checked_mul(86_400).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    Ok(std::time::Duration::from_secs(secs))
}

/// A moment as people write it: a duration from `now` (`4h`, `2d`), an RFC 3339 time
/// (`2026-12-10T18:00:00+08:00`), or `YYYY-MM-DD HH:MM` in UTC or followed by a zone
/// (`2026-12-10 18:00 Asia/Shanghai`). Unix seconds.
pub fn parse_when(text: &str, now: i64) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(d) = parse_duration(text) {
        return Ok(now.saturating_add(d.as_secs() as i64));
    }
    if let Ok(t) = text.parse::<jiff::Timestamp>() {
        return Ok(t.as_second());
    }
    let bad = || {
        format!(
            "'{text}' is not a time: write a duration (4h, 2d), 2026-12-10T18:00:00+08:00, or 2026-12-10 18:00 Asia/Shanghai"
        )
    };
    let mut parts = text.split_whitespace();
    let (date, time, zone) = (parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?, parts.next());
    if parts.next().is_some() {
        return Err(bad());
    }
    let civil: jiff::civil::DateTime = format!("{date}T{time}").parse().map_err(|_| bad())?;
    let tz = jiff::tz::TimeZone::get(zone.unwrap_or("UTC")).map_err(|_| bad())?;
    civil.to_zoned(tz).map(|z| z.timestamp().as_second()).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_as_people_write_them() {
        let now = 1_796_662_800; // 2026-12-07 17:00:00 UTC
        assert_eq!(parse_when("4h", now).unwrap(), now + 4 * 3600);
        assert_eq!(parse_when("2026-12-07T17:00:00Z", now).unwrap(), now);
        assert_eq!(parse_when("2026-12-08T01:00:00+08:00", now).unwrap(), now);
        assert_eq!(parse_when("2026-12-07 17:00", now).unwrap(), now);
        assert_eq!(parse_when("2026-12-08 01:00 Asia/Shanghai", now).unwrap(), now);
        for bad in ["tomorrow", "2026-12-07", "2026-12-07 17:00 Nowhere/Else", "17:00"] {
            assert!(parse_when(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_as_people_write_them() {
        assert_eq!(parse_duration("30m").unwrap().as_secs(), 1800);
        assert_eq!(parse_duration("10d").unwrap().as_secs(), 864_000);
        assert_eq!(parse_duration("45s").unwrap().as_secs(), 45);
        assert_eq!(parse_duration("2h").unwrap().as_secs(), 7200);
        for bad in ["", "m", "30", "30 minutes", "-5m", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    fn check(secs: i64, expected: &str) {
        assert_eq!(format_utc(secs), expected);
    }

    #[test]
    fn known_dates() {
        check(0, "1970-01-01 00:00:00Z");
        check(951_782_400, "2000-02-29 00:00:00Z");
        check(1_795_317_906, "2026-11-22 03:25:06Z");
        check(4_107_542_399, "2100-02-28 23:59:59Z");
        assert_eq!(compact_utc(1_795_317_906), "20261122-032506");
    }
}
