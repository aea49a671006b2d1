//! The units of the file: durations (`500ms`, `30s`, `5m`, `24h`, `1d`) and byte sizes
//! (`64KiB`, `1MB`), for serde and for other inputs that should read the same way.

use std::time::Duration;

/// `serde(with)` for durations: `500ms`, `30s`, `5m`, `24h`, `1d`, or a bare integer meaning
/// seconds. Written back as milliseconds, which is exact for anything parsed.
pub(crate) mod duration {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Deserializer, Visitor};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{}ms", value.as_millis()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as 500ms, 30s, 5m, 24h, 1d, or a number of seconds")
        }

        fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(secs))
        }

        fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Duration, E> {
            u64::try_from(secs)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("invalid duration {secs}: must not be negative")))
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            super::parse_duration(text).map_err(E::custom)
        }
    }
}

/// Parses the duration syntax of the config file (`500ms`, `30s`, `5m`, `24h`, `1d`, or a
/// bare number of seconds), for other inputs that should read the same way.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let parsed = split_number(text).and_then(|(number, unit)| {
        let secs_per_unit = match unit {
            "ms" => return Some(Duration::from_millis(number)),
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return None,
        };
        number.checked_mul(secs_per_unit).map(Duration::from_secs)
    });
    parsed.ok_or_else(|| {
        format!(
            "invalid duration `{text}`: expected a whole number with a unit of ms, s, m, h or d \
             (500ms, 30s, 5m, 24h, 1d), or a bare number of seconds"
        )
    })
}

/// `serde(with)` for byte sizes: an integer, or one with a unit of B, KB, MB, GB (powers of
/// 1000) or KiB, MiB, GiB (powers of 1024). Written back as a plain integer.
pub(crate) mod size {
    use std::fmt;

    use serde::de::{self, Deserializer, Visitor};
    use serde::{Serialize, Serializer};

    pub fn serialize<S: Serializer, T: Serialize>(
        value: &T,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        value.serialize(serializer)
    }

    pub fn deserialize<'de, D, T>(deserializer: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        let bytes = deserializer.deserialize_any(SizeVisitor)?;
        T::try_from(bytes)
            .map_err(|_| de::Error::custom(format!("size {bytes} is too large for this platform")))
    }

    struct SizeVisitor;

    impl Visitor<'_> for SizeVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size such as 65536, 64KiB, 1MiB, 2GiB or 10MB")
        }

        fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<u64, E> {
            Ok(bytes)
        }

        fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<u64, E> {
            u64::try_from(bytes)
                .map_err(|_| E::custom(format!("invalid size {bytes}: must not be negative")))
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<u64, E> {
            super::parse_size(text).ok_or_else(|| {
                E::custom(format!(
                    "invalid size `{text}`: expected a whole number of bytes, optionally with a \
                     unit of B, KB, MB, GB, KiB, MiB or GiB (64KiB, 1MiB, 10MB)"
                ))
            })
        }
    }
}

fn parse_size(text: &str) -> Option<u64> {
    let (number, unit) = split_number(text)?;
    let multiplier: u64 = match unit {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

/// Splits `30s` into `(30, "s")`; `None` without leading digits or when they overflow.
fn split_number(text: &str) -> Option<(u64, &str)> {
    let text = text.trim();
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let number = text[..end].parse().ok()?;
    Some((number, text[end..].trim_start()))
}
