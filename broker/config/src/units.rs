//! Human-friendly units in the YAML file: durations (`10s`, `2h`, `7d`, or plain seconds) and
//! byte sizes (`1MiB`, `512KB`, or plain bytes).

use std::time::Duration;

pub use bytesize::ByteSize;

/// Serde for `Duration` as a humantime string (`"10s"`); also accepts integer seconds.
pub mod duration {
    use super::*;
    use serde::{Deserializer, Serializer, de};

    /// Writes e.g. `"1m 30s"`.
    pub fn serialize<S: Serializer>(value: &Duration, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(&humantime::format_duration(*value).to_string())
    }

    /// Reads `"90s"`, `"1m 30s"`, `"2h"` or `90`.
    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
        de.deserialize_any(DurationVisitor)
    }

    pub(crate) struct DurationVisitor;

    impl de::Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration such as \"30s\", \"5m\", \"2h\", \"7d\" or a number of seconds")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("duration must not be negative, got {v}")))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            humantime::parse_duration(v.trim()).map_err(|err| {
                E::custom(format!("invalid duration {v:?}: {err} (use e.g. \"30s\", \"5m\", \"2h\")"))
            })
        }
    }
}

/// Serde for `Option<Duration>`: absent or `null` is `None`.
pub mod opt_duration {
    use super::*;
    use serde::{Deserializer, Serializer, de};

    /// Writes the humantime string; `None` is skipped by the field attribute.
    pub fn serialize<S: Serializer>(value: &Option<Duration>, ser: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => super::duration::serialize(d, ser),
            None => ser.serialize_none(),
        }
    }

    /// Reads what [`super::duration`] reads, or `null`.
    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
        de.deserialize_option(OptVisitor)
    }

    pub(crate) struct OptVisitor;

    impl<'de> de::Visitor<'de> for OptVisitor {
        type Value = Option<Duration>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration such as \"30s\" or \"7d\", or null for never")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
            super::duration::deserialize(de).map(Some)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(Duration::from_secs(v)))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            de::Visitor::visit_i64(super::duration::DurationVisitor, v).map(Some)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            de::Visitor::visit_str(super::duration::DurationVisitor, v).map(Some)
        }
    }
}

/// Serde for [`ByteSize`] that writes exact values (`3KiB`, `16MiB`, or plain bytes) so a
/// rendered config never rounds, and reads anything `bytesize` understands.
pub mod byte_size {
    use super::ByteSize;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the largest binary unit that divides the value exactly.
    pub fn serialize<S: Serializer>(value: &ByteSize, ser: S) -> Result<S::Ok, S::Error> {
        let bytes = value.as_u64();
        for (unit, name) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
            if bytes != 0 && bytes.is_multiple_of(unit) {
                return ser.serialize_str(&format!("{}{name}", bytes / unit));
            }
        }
        ser.serialize_u64(bytes)
    }

    /// Reads `1048576`, `"1MiB"`, `"512 KB"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<ByteSize, D::Error> {
        ByteSize::deserialize(de)
    }
}
