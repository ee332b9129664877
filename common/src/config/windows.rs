//! Deploy windows: an env's `windows = ["Mon-Thu 10:00-16:00 Asia/Shanghai"]`. Days are
//! `Mon`…`Sun`, ranges (`Mon-Thu`, `Fri-Mon`) and lists (`Mon,Wed,Fri`), or `*`; times are
//! `HH:MM-HH:MM` (an end at or before the start runs past midnight, belonging to the day it
//! starts); the zone is an IANA name (the system's tz database), `UTC` when left out.

use serde::Serialize;

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Window {
    /// As written.
    pub text: String,
    #[serde(skip)]
    days: [bool; 7],
    #[serde(skip)]
    start: u32,
    #[serde(skip)]
    end: u32,
    #[serde(skip)]
    tz: String,
}

fn day(name: &str) -> Option<usize> {
    DAYS.iter().position(|d| d.eq_ignore_ascii_case(name.get(..3).unwrap_or(name)) && name.len() <= 9)
}

fn minutes(text: &str) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (m < 60 && (h < 24 || (h == 24 && m == 0)) && text.len() == 5).then_some(h * 60 + m)
}

impl Window {
    pub fn parse(text: &str) -> Result<Window, String> {
        let bad = |why: &str| format!("window '{text}': {why} (write it like \"Mon-Thu 10:00-16:00 Asia/Shanghai\")");
        let parts: Vec<&str> = text.split_whitespace().collect();
        let (days_text, times, tz) = match parts.as_slice() {
            [d, t] => (*d, *t, "UTC"),
            [d, t, z] => (*d, *t, *z),
            _ => return Err(bad("days, times and a time zone")),
        };
        let mut days = [false; 7];
        for item in days_text.split(',') {
            if item == "*" {
                days = [true; 7];
                continue;
            }
            let (from, to) = item.split_once('-').unwrap_or((item, item));
            let (Some(a), Some(b)) = (day(from), day(to)) else {
                return Err(bad(&format!("'{item}' is not a day or a range of days")));
            };
            let mut d = a;
            loop {
                days[d] = true;
                if d == b {
                    break;
                }
                d = (d + 1) % 7;
            }
        }
        let (start, end) = times
            .split_once('-')
            .and_then(|(s, e)| Some((minutes(s)?, minutes(e)?)))
            .ok_or_else(|| bad(&format!("'{times}' is not HH:MM-HH:MM")))?;
        if start == end {
            return Err(bad("a window must not be empty"));
        }
        jiff::tz::TimeZone::get(tz).map_err(|_| {
            bad(&format!("unknown time zone '{tz}' (an IANA name such as Asia/Shanghai; the host needs tzdata)"))
        })?;
        Ok(Window { text: text.to_owned(), days, start, end, tz: tz.to_owned() })
    }

    fn local(&self, unix: i64) -> Option<jiff::Zoned> {
        let tz = jiff::tz::TimeZone::get(&self.tz).ok()?;
        Some(jiff::Timestamp::from_second(unix).ok()?.to_zoned(tz))
    }

    /// Whether the instant `unix` (seconds) is inside the window.
    pub fn contains(&self, unix: i64) -> bool {
        let Some(z) = self.local(unix) else { return false };
        let wd = z.weekday().to_monday_zero_offset() as usize;
        let m = u32::from(z.hour() as u8) * 60 + u32::from(z.minute() as u8);
        if self.start < self.end {
            self.days[wd] && self.start <= m && m < self.end
        } else {
            (self.days[wd] && m >= self.start) || (self.days[(wd + 6) % 7] && m < self.end)
        }
    }

    /// When the window next opens at or after `unix` (now, if it is open).
    pub fn next_open(&self, unix: i64) -> Option<i64> {
        if self.contains(unix) {
            return Some(unix);
        }
        let z = self.local(unix)?;
        let tz = jiff::tz::TimeZone::get(&self.tz).ok()?;
        for offset in 0..8i64 {
            let date = z.date().checked_add(jiff::Span::new().days(offset)).ok()?;
            if !self.days[date.weekday().to_monday_zero_offset() as usize] {
                continue;
            }
            let at = date.at((self.start / 60) as i8, (self.start % 60) as i8, 0, 0).to_zoned(tz.clone()).ok()?;
            let secs = at.timestamp().as_second();
            if secs >= unix {
                return Some(secs);
            }
        }
        None
    }
}

/// Whether `unix` is inside one of `windows` (no windows: always).
pub fn open(windows: &[Window], unix: i64) -> bool {
    windows.is_empty() || windows.iter().any(|w| w.contains(unix))
}

/// When the first of `windows` next opens.
pub fn next_open(windows: &[Window], unix: i64) -> Option<i64> {
    windows.iter().filter_map(|w| w.next_open(unix)).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-07 is a Monday.
    fn utc(day: u32, h: i8, m: i8) -> i64 {
        jiff::civil::date(2026, 12, day as i8)
            .at(h, m, 0, 0)
            .to_zoned(jiff::tz::TimeZone::UTC)
            .unwrap()
            .timestamp()
            .as_second()
    }

    #[test]
    fn windows_open_on_their_days_and_hours_in_their_zone() {
        let w = Window::parse("Mon-Thu 10:00-16:00 Asia/Shanghai").unwrap();
        // Monday 10:00 in Shanghai is 02:00 UTC.
        assert!(!w.contains(utc(7, 1, 59)));
        assert!(w.contains(utc(7, 2, 0)));
        assert!(w.contains(utc(7, 7, 59)));
        assert!(!w.contains(utc(7, 8, 0)), "16:00 is closed");
        // Friday (the 11th) is not in Mon-Thu; the next opening is Monday the 14th 02:00 UTC.
        assert!(!w.contains(utc(11, 3, 0)));
        assert_eq!(w.next_open(utc(11, 3, 0)), Some(utc(14, 2, 0)));
        assert_eq!(w.next_open(utc(7, 1, 0)), Some(utc(7, 2, 0)));
        // Past midnight belongs to the day it starts: Sat 22:00-02:00 covers Sunday 01:00.
        let night = Window::parse("Sat 22:00-02:00").unwrap();
        assert!(night.contains(utc(13, 1, 0)), "Sunday 01:00 UTC");
        assert!(!night.contains(utc(14, 1, 0)), "Monday 01:00 UTC");
        assert!(Window::parse("Fri-Mon 00:00-24:00 UTC").unwrap().contains(utc(14, 23, 59)));
        assert!(Window::parse("Mon,Wed 09:00-10:00").unwrap().contains(utc(9, 9, 30)));
        assert!(open(&[], utc(7, 0, 0)), "no windows: always open");
        for bad in [
            "Mon 10:00",
            "Funday 10:00-11:00 UTC",
            "Mon 10:00-10:00 UTC",
            "Mon 25:00-26:00 UTC",
            "Mon 10:00-11:00 Mars/Olympus",
        ] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
    }
}
