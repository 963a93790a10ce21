//! Durations as they are written in config: `250ms`, `2s`, `1m`, `1h`, `1d`, or `0`.

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use std::fmt;
use std::str::FromStr;

/// A config duration; serialized back in the same string form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// A duration of whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }
    /// A duration of milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }
    /// The std value.
    pub const fn get(self) -> std::time::Duration {
        self.0
    }
    /// `true` for `0`, which config uses to mean "no limit".
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl schemars::JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": r"^(0|[0-9]+(\.[0-9]+)?(ms|s|m|h|d))$",
            "description": "A duration: a number and a unit (`ms`, `s`, `m`, `h`, `d`), e.g. `250ms`, `2s`, `1.5m`; or `0`.",
        })
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "0" {
            return Ok(Self::default());
        }
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(|| format!("duration \"{s}\" has no unit (use ms, s, m, h or d)"))?;
        let (num, unit) = s.split_at(split);
        let value: f64 = num.parse().map_err(|_| format!("duration \"{s}\" does not start with a number"))?;
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(format!("duration \"{s}\": unknown unit \"{unit}\" (use ms, s, m, h or d)")),
        };
        let secs = value * scale;
        if !secs.is_finite() || !(0.0..=1e10).contains(&secs) {
            return Err(format!("duration \"{s}\" is out of range"));
        }
        Ok(Self(std::time::Duration::from_secs_f64(secs)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            f.write_str("0")
        } else if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"250ms\", \"2s\" or \"1m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                if v == 0 {
                    Ok(Duration::default())
                } else {
                    Err(E::custom(format!("duration {v} has no unit (write \"{v}s\" or \"{v}ms\")")))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                if v == 0 {
                    Ok(Duration::default())
                } else {
                    Err(E::custom(format!("duration {v} has no unit (write \"{v}s\" or \"{v}ms\")")))
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("250ms".parse::<Duration>(), Ok(Duration::from_millis(250)));
        assert_eq!("2s".parse::<Duration>(), Ok(Duration::from_secs(2)));
        assert_eq!("1.5s".parse::<Duration>(), Ok(Duration::from_millis(1500)));
        assert_eq!("1m".parse::<Duration>(), Ok(Duration::from_secs(60)));
        assert_eq!("0".parse::<Duration>(), Ok(Duration::default()));
        assert!("5".parse::<Duration>().is_err());
        assert!("5x".parse::<Duration>().is_err());
        assert!("s".parse::<Duration>().is_err());
        assert!("-1s".parse::<Duration>().is_err());
    }

    #[test]
    fn displays_round_trip() {
        for s in ["250ms", "2s", "1m", "3h", "0"] {
            assert_eq!(s.parse::<Duration>().map(|d| d.to_string()), Ok(s.to_string()));
        }
    }
}
