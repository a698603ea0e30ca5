//! Kernel timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) → wall-clock text.

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

    fn unix_ns(&self, monotonic: u64) -> i128 {
        self.realtime_minus_monotonic_ns + i128::from(monotonic)
    }

    /// `2026-11-22T12:01:02.123456Z`.
    pub fn rfc3339(&self, monotonic: u64) -> String {
        let ns = self.unix_ns(monotonic).max(0);
        let secs = (ns / 1_000_000_000) as i64;
        let micros = (ns % 1_000_000_000) / 1_000;
        let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
        let of_day = secs.rem_euclid(86_400);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            of_day / 3_600,
            of_day % 3_600 / 60,
            of_day % 60
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(
            WallClock::fixed(0).rfc3339(0),
            "1970-01-01T00:00:00.000000Z"
        );
        // 2026-11-22T11:26:08.5Z = 1795346768.5 s since the epoch.
        assert_eq!(
            WallClock::fixed(1_795_346_768_500_000_000).rfc3339(0),
            "2026-11-22T11:26:08.500000Z"
        );
        // Leap day.
        assert_eq!(
            WallClock::fixed(951_782_400 * 1_000_000_000).rfc3339(1_000),
            "2000-02-29T00:00:00.000001Z"
        );
    }

    #[test]
    fn monotonic_advances() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a);
    }
}
