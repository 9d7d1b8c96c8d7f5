//! Value rules, each written once and applied twice: while parsing YAML (so the error carries
//! the key path and the value's line) and in [`crate::BrokerConfig::validate`] (for configs
//! built in code, like the operator's).

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::Deserializer;
use serde::de::{Error as _, SeqAccess, Visitor};

use crate::units::duration::DurationVisitor;
use crate::units::opt_duration::OptVisitor;
use crate::{ByteSize, Listener, MQTT_MAX_PACKET_SIZE};

/// At least 1.
pub(crate) fn at_least_one<T: Copy + Into<u64>>(value: &T) -> Result<(), String> {
    if (*value).into() == 0 { Err("must be at least 1".to_string()) } else { Ok(()) }
}

/// Within what MQTT can encode, and no smaller than a useful packet.
pub(crate) fn packet_size(value: &ByteSize) -> Result<(), String> {
    let bytes = value.as_u64();
    if (64..=MQTT_MAX_PACKET_SIZE).contains(&bytes) {
        Ok(())
    } else {
        Err(format!("{bytes} bytes is outside 64 B ..= {MQTT_MAX_PACKET_SIZE} B (the MQTT maximum)"))
    }
}

/// Representable as a Session Expiry Interval below "never".
pub(crate) fn session_expiry(value: &Option<Duration>) -> Result<(), String> {
    match value {
        Some(d) if d.as_secs() >= u64::from(u32::MAX) => {
            Err("must be below 4294967295 s (leave it unset for \"never\")".to_string())
        }
        _ => Ok(()),
    }
}

/// Longer than zero.
pub(crate) fn positive_duration(value: &Duration) -> Result<(), String> {
    if value.is_zero() { Err("must be above 0s".to_string()) } else { Ok(()) }
}

/// Not blank.
pub(crate) fn nonempty(value: &str) -> Result<(), String> {
    if value.trim().is_empty() { Err("must not be empty".to_string()) } else { Ok(()) }
}

/// A valid topic filter (no `$share` prefix).
pub(crate) fn filter(value: &str) -> Result<(), String> {
    crate::topic::validate_filter(value, usize::MAX).map_err(|e| format!("{value:?}: {e}"))
}

/// At least one listener, named sensibly, no two on the same address. Errors name the
/// offending element (`listeners[1].bind`).
pub(crate) fn listeners(listeners: &[Listener]) -> Result<(), (String, String)> {
    if listeners.is_empty() {
        return Err(("listeners".to_string(), "at least one listener is required".to_string()));
    }
    for (i, listener) in listeners.iter().enumerate() {
        if let Some(name) = &listener.name
            && name.trim().is_empty()
        {
            return Err((format!("listeners[{i}].name"), "must not be empty".to_string()));
        }
        if let Some(j) =
            listeners[..i].iter().position(|other| other.bind == listener.bind && listener.bind.port() != 0)
        {
            return Err((
                format!("listeners[{i}].bind"),
                format!("{} is already used by listeners[{j}]", listener.bind),
            ));
        }
        let protocol = listener.protocol;
        match (&listener.tls, protocol.is_tls()) {
            (None, true) => {
                return Err((
                    format!("listeners[{i}].tls"),
                    format!("a {} listener needs tls.cert_file and tls.key_file", protocol.as_str()),
                ));
            }
            (Some(_), false) => {
                return Err((
                    format!("listeners[{i}].tls"),
                    format!("only mqtts and wss listeners use tls (this one is {})", protocol.as_str()),
                ));
            }
            (Some(tls), true) => {
                if tls.require_certificate && tls.ca_file.is_none() {
                    return Err((
                        format!("listeners[{i}].tls.ca_file"),
                        "require_certificate needs the CA that client certificates chain to".to_string(),
                    ));
                }
                if tls.use_identity_as_username && !tls.require_certificate {
                    return Err((
                        format!("listeners[{i}].tls.use_identity_as_username"),
                        "needs require_certificate: true".to_string(),
                    ));
                }
            }
            (None, false) => {}
        }
        if let Some(path) = &listener.path {
            if !protocol.is_websocket() {
                return Err((
                    format!("listeners[{i}].path"),
                    format!("only ws and wss listeners have a path (this one is {})", protocol.as_str()),
                ));
            }
            if !path.starts_with('/') {
                return Err((format!("listeners[{i}].path"), format!("'{path}' must start with '/'")));
            }
        }
    }
    Ok(())
}

/// Wraps a visitor and applies a rule to what it produced. The rule's error is raised inside
/// the visitor, while serde_yaml still knows where the value is, so the message gets the key
/// path and the value's own line, exactly like a type error.
struct Checked<V, R> {
    inner: V,
    rule: R,
}

impl<'de, V, R> Visitor<'de> for Checked<V, R>
where
    V: Visitor<'de>,
    R: Fn(&V::Value) -> Result<(), String>,
{
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        let value = self.inner.visit_u64(v)?;
        (self.rule)(&value).map_err(E::custom).map(|()| value)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        let value = self.inner.visit_i64(v)?;
        (self.rule)(&value).map_err(E::custom).map(|()| value)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        let value = self.inner.visit_str(v)?;
        (self.rule)(&value).map_err(E::custom).map(|()| value)
    }
}

/// Unsigned integers of type `T`.
struct IntVisitor<T>(PhantomData<T>);

impl<T: TryFrom<u64>> Visitor<'_> for IntVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an integer from 0 to {}", std::any::type_name::<T>().trim_start_matches("core::"))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::custom(format!("{v} is too large for {}", std::any::type_name::<T>())))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::custom(format!("must not be negative, got {v}"))),
        }
    }
}

/// Byte sizes: an integer number of bytes or a string such as `1MiB`.
struct ByteSizeVisitor;

impl Visitor<'_> for ByteSizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size such as \"512KiB\", \"1MiB\" or a number of bytes")
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
        Ok(ByteSize::b(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
        u64::try_from(v)
            .map(ByteSize::b)
            .map_err(|_| E::custom(format!("size must not be negative, got {v}")))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
        v.trim().parse::<ByteSize>().map_err(|err| E::custom(format!("invalid size {v:?}: {err}")))
    }
}

/// Strings.
struct StringVisitor;

impl Visitor<'_> for StringVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
}

pub(crate) fn de_at_least_one<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64> + Copy + Into<u64>,
{
    de.deserialize_any(Checked { inner: IntVisitor::<T>(PhantomData), rule: at_least_one::<T> })
}

pub(crate) fn de_packet_size<'de, D: Deserializer<'de>>(de: D) -> Result<ByteSize, D::Error> {
    de.deserialize_any(Checked { inner: ByteSizeVisitor, rule: packet_size })
}

pub(crate) fn de_session_expiry<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
    /// `null` or a duration; the rule runs in the duration's own visitor (see [`Checked`]).
    struct ExpiryVisitor;
    fn checked() -> Checked<DurationVisitor, impl Fn(&Duration) -> Result<(), String>> {
        Checked { inner: DurationVisitor, rule: |d: &Duration| session_expiry(&Some(*d)) }
    }
    impl<'de> Visitor<'de> for ExpiryVisitor {
        type Value = Option<Duration>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            OptVisitor.expecting(f)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
            de.deserialize_any(checked()).map(Some)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            checked().visit_u64(v).map(Some)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            checked().visit_i64(v).map(Some)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            checked().visit_str(v).map(Some)
        }
    }
    de.deserialize_option(ExpiryVisitor)
}

pub(crate) fn de_positive_duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    de.deserialize_any(Checked { inner: DurationVisitor, rule: positive_duration })
}

pub(crate) fn de_nonempty<'de, D: Deserializer<'de>>(de: D) -> Result<String, D::Error> {
    de.deserialize_string(Checked { inner: StringVisitor, rule: |s: &String| nonempty(s) })
}

/// A list of valid topic filters; checked per element inside the visitor (keeps positions).
pub(crate) fn de_filters<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    struct FiltersVisitor;
    impl<'de> Visitor<'de> for FiltersVisitor {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of topic filters")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out: Vec<String> = Vec::new();
            while let Some(value) = seq.next_element::<String>()? {
                filter(&value).map_err(|reason| A::Error::custom(format!("[{}]: {reason}", out.len())))?;
                out.push(value);
            }
            Ok(out)
        }
    }
    de.deserialize_seq(FiltersVisitor)
}

/// Checks inside the sequence visitor, where the error still carries the position.
pub(crate) fn de_listeners<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<Listener>, D::Error> {
    struct ListenersVisitor;
    impl<'de> Visitor<'de> for ListenersVisitor {
        type Value = Vec<Listener>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of listeners")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(listener) = seq.next_element::<Listener>()? {
                out.push(listener);
                if let Err((key, reason)) = listeners(&out) {
                    return Err(A::Error::custom(format!("{key}: {reason}")));
                }
            }
            listeners(&out).map_err(|(key, reason)| A::Error::custom(format!("{key}: {reason}")))?;
            Ok(out)
        }
    }
    de.deserialize_seq(ListenersVisitor)
}
