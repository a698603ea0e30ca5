//! Kernel timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) → wall-clock time: the one place
//! where an event's wall-clock time is derived, and its RFC 3339 form written and read.

use std::time::{SystemTime, UNIX_EPOCH};

/// Offset between CLOCK_REALTIME and CLOCK_MONOTONIC, taken once at start-up.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    realtime_minus_monotonic_ns: i128,
}

impl WallClock {
    pub fn now() -> Self {
        let realtime = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        Self {
            realtime_minus_monotonic_ns: realtime - i128::from(monotonic_ns()),
        }
    }

    /// A clock whose monotonic zero is `unix_ns` (tests).
    pub const fn fixed(unix_ns: i128) -> Self {
        Self {
            realtime_minus_monotonic_ns: unix_ns,
        }
    }

    /// The wall-clock time of kernel time `monotonic`, in whole microseconds: the offset
    /// between the clocks is read once, so finer digits would be noise, and the time then reads
    /// back from its RFC 3339 form unchanged.
    pub fn at(&self, monotonic: u64) -> WallTime {
        let ns = (self.realtime_minus_monotonic_ns + i128::from(monotonic)).max(0);
        WallTime(u64::try_from(ns - ns % 1_000).unwrap_or(u64::MAX))
    }
}

/// Wall-clock time: nanoseconds since the Unix epoch (UTC), whole microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WallTime(pub u64);

impl WallTime {
    /// `2026-11-22T12:01:02.123456Z`.
    pub fn rfc3339(self) -> String {
        let secs = (self.0 / 1_000_000_000) as i64;
        let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
        format!("{year:04}-{month:02}-{day:02}T{}Z", self.time_of_day())
    }

    /// `12:01:02.123456`: the time of day (UTC) with microseconds.
    pub fn time_of_day(self) -> String {
        let of_day = (self.0 / 1_000_000_000) % 86_400;
        let micros = (self.0 % 1_000_000_000) / 1_000;
        format!(
            "{:02}:{:02}:{:02}.{micros:06}",
            of_day / 3_600,
            of_day % 3_600 / 60,
            of_day % 60
        )
    }

    /// Reads `rfc3339`'s form back (`None` for anything else).
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 27 || bytes[26] != b'Z' || bytes[10] != b'T' {
            return None;
        }
        let number = |range: std::ops::Range<usize>| -> Option<i64> {
            let digits = text.get(range)?;
            digits
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| digits.parse().ok())?
        };
        let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':'), (19, b'.')];
        if separators.iter().any(|&(at, byte)| bytes[at] != byte) {
            return None;
        }
        let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
        let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
        let micros = number(20..26)?;
        if !(1..=12).contains(&month)
            || !(1..=31).contains(&day)
            || hour > 23
            || minute > 59
            || second > 59
        {
            return None;
        }
        let days = days_from_civil(year, month, day);
        let secs = days * 86_400 + hour * 3_600 + minute * 60 + second;
        let ns = u64::try_from(secs).ok()?.checked_mul(1_000_000_000)?;
        Some(Self(ns + u64::try_from(micros).ok()? * 1_000))
    }
}

/// Current CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`, <http://howardhinnant.github.io/date_algorithms.html>).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) → days since 1970-01-01, the inverse of `civil_from_days` (Howard
/// Hinnant's `days_from_civil`, same page).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(
            WallClock::fixed(0).at(0).rfc3339(),
            "1970-01-01T00:00:00.000000Z"
        );
        // 2026-11-22T11:26:08.5Z = 1795346768.5 s since the epoch.
        assert_eq!(
            WallClock::fixed(1_795_346_768_500_000_000).at(0).rfc3339(),
            "2026-11-22T11:26:08.500000Z"
        );
        // Leap day; nanoseconds below a microsecond are dropped.
        let leap = WallClock::fixed(951_782_400 * 1_000_000_000).at(1_999);
        assert_eq!(leap.rfc3339(), "2000-02-29T00:00:00.000001Z");
        assert_eq!(leap.time_of_day(), "00:00:00.000001");
    }

    #[test]
    fn reads_its_own_form_back() {
        for ns in [
            0,
            951_782_400_000_001_000,
            1_795_346_768_500_000_000,
            4_102_444_799_999_999_000,
        ] {
            let time = WallTime(ns);
            assert_eq!(WallTime::parse_rfc3339(&time.rfc3339()), Some(time));
        }
        for bad in [
            "",
            "2026-11-22T11:26:08.5Z",
            "2026-11-22 11:26:08.500000Z",
            "2026-13-22T11:26:08.500000Z",
            "2026-11-22T11:26:08.50000xZ",
            "2026-11-22T11:26:08.500000+",
        ] {
            assert_eq!(WallTime::parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn monotonic_advances() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a);
    }
}
