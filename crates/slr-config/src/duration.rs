//! Durations as configuration files write them: a number and a unit.

use std::time::Duration;

/// Parses a duration such as `"5s"`, `"500ms"`, `"2m"`, `"1h"` or `"250us"`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "us" | "µs" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return None,
    };
    // `try_`: `Duration::from_secs_f64` panics above u64::MAX seconds ("99999999999999999999h"),
    // and a typo in a config file must be an error, not a crash (fuzz/corpus/config/regression-*).
    Duration::try_from_secs_f64(secs).ok()
}

/// Writes a duration the way [`parse_duration`] reads it back exactly (`"1500ms"`, `"2s"`).
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}us", d.as_micros())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
        assert_eq!(parse_duration("99999999999999999999h"), None);
    }

    #[test]
    fn formatted_durations_read_back() {
        for d in [
            Duration::from_secs(3),
            Duration::from_millis(1500),
            Duration::from_micros(250),
            Duration::ZERO,
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Some(d), "{d:?}");
        }
    }
}
