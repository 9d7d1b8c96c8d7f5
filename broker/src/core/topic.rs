//! Topic names and filters: validation (MQTT 5.0 §4.7, shared with the config crate and the
//! operator), `$share`/`$queue` shared subscriptions (§4.8.2) and `$delayed` publishes.

use super::types::ByteString;

/// Largest delay accepted by `$delayed/<seconds>/<topic>` (about 49.7 days), as in EMQX.
pub const MAX_DELAY_SECS: u32 = 4_294_967;

pub use fleetmq_config::topic::{TopicError, matches, validate_filter, validate_topic_name};

/// A subscription filter split into its shared group (if any) and the filter proper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionFilter {
    /// Group of a `$share/<group>/...` or `$queue/...` subscription.
    pub group: Option<ByteString>,
    /// The topic filter that messages are matched against.
    pub filter: ByteString,
}

/// Group name used for `$queue/<filter>` subscriptions (one queue shared by all members).
pub const QUEUE_GROUP: &str = "$queue";

/// Parses and validates what a client sent in SUBSCRIBE or UNSUBSCRIBE.
pub fn parse_subscription(raw: &ByteString, max_levels: usize) -> Result<SubscriptionFilter, TopicError> {
    if let Some(rest) = raw.strip_prefix("$share/") {
        let Some((group, filter)) = rest.split_once('/') else {
            return Err(TopicError::InvalidShare("expected $share/<group>/<filter>"));
        };
        if group.is_empty() {
            return Err(TopicError::InvalidShare("share name is empty"));
        }
        if group.contains(['+', '#']) {
            return Err(TopicError::InvalidShare("share name contains a wildcard"));
        }
        if filter.is_empty() {
            return Err(TopicError::InvalidShare("topic filter after the share name is empty"));
        }
        validate_filter(filter, max_levels)?;
        return Ok(SubscriptionFilter { group: Some(substr(raw, group)), filter: substr(raw, filter) });
    }
    if let Some(filter) = raw.strip_prefix("$queue/") {
        if filter.is_empty() {
            return Err(TopicError::InvalidShare("topic filter after $queue/ is empty"));
        }
        validate_filter(filter, max_levels)?;
        return Ok(SubscriptionFilter {
            group: Some(ByteString::from_static(QUEUE_GROUP)),
            filter: substr(raw, filter),
        });
    }
    validate_filter(raw, max_levels)?;
    Ok(SubscriptionFilter { group: None, filter: raw.clone() })
}

/// If `topic` is a `$delayed/<seconds>/<topic>` publish, returns the delay and the real
/// topic, or why the form is refused.
pub fn parse_delayed(topic: &ByteString, max_levels: usize) -> Option<Result<(u32, ByteString), TopicError>> {
    let rest = topic.strip_prefix("$delayed/")?;
    let bad = |why: &str| Some(Err(TopicError::InvalidDelayed(why.to_string())));
    let Some((secs, target)) = rest.split_once('/') else {
        return bad("expected $delayed/<seconds>/<topic>");
    };
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return bad(&format!("delay {secs:?} is not a whole number of seconds"));
    }
    let delay = match secs.parse::<u64>() {
        Ok(d) if d <= u64::from(MAX_DELAY_SECS) => d as u32,
        _ => return bad(&format!("delay {secs} exceeds the maximum of {MAX_DELAY_SECS} seconds")),
    };
    if let Err(err) = validate_topic_name(target, max_levels) {
        return bad(&format!("target topic: {err}"));
    }
    if target.starts_with('$') {
        return bad("target topic must not start with '$'");
    }
    Some(Ok((delay, substr(topic, target))))
}

/// `part` (a slice of `whole`) as a `ByteString` sharing `whole`'s buffer.
fn substr(whole: &ByteString, part: &str) -> ByteString {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    whole.slice(start..start + part.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bs(s: &str) -> ByteString {
        ByteString::from(s)
    }

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("a/b/c", 10).is_ok());
        assert!(validate_topic_name("/", 10).is_ok());
        assert!(validate_topic_name("$SYS/x", 10).is_ok());
        assert_eq!(validate_topic_name("", 10), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+", 10), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a/#", 10), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a\0b", 10), Err(TopicError::NullCharacter));
        assert_eq!(validate_topic_name("a/b/c", 2), Err(TopicError::TooManyLevels { levels: 3, max: 2 }));
    }

    #[test]
    fn filters() {
        for ok in ["#", "+", "a/#", "a/+/c", "+/+", "/#", "a//b", "$SYS/#"] {
            assert!(validate_filter(ok, 10).is_ok(), "{ok}");
        }
        for (bad, err) in [
            ("", TopicError::Empty),
            ("a/#/b", TopicError::MisplacedWildcard('#')),
            ("a#", TopicError::MisplacedWildcard('#')),
            ("a/b#", TopicError::MisplacedWildcard('#')),
            ("a+/b", TopicError::MisplacedWildcard('+')),
            ("a/+b", TopicError::MisplacedWildcard('+')),
        ] {
            assert_eq!(validate_filter(bad, 10), Err(err), "{bad}");
        }
        assert!(matches!(validate_filter("a/b/c/d", 3), Err(TopicError::TooManyLevels { .. })));
    }

    #[test]
    fn shared_subscriptions() {
        let s = parse_subscription(&bs("$share/g1/a/+"), 10).unwrap();
        assert_eq!(s.group.as_deref(), Some("g1"));
        assert_eq!(&*s.filter, "a/+");
        let q = parse_subscription(&bs("$queue/jobs/#"), 10).unwrap();
        assert_eq!(q.group.as_deref(), Some(QUEUE_GROUP));
        assert_eq!(&*q.filter, "jobs/#");
        let plain = parse_subscription(&bs("a/b"), 10).unwrap();
        assert_eq!(plain.group, None);
        for bad in ["$share/g", "$share//a", "$share/g+/a", "$share/g/", "$queue/", "$share/g/a/#/b"] {
            assert!(parse_subscription(&bs(bad), 10).is_err(), "{bad}");
        }
    }

    #[test]
    fn delayed_publish_forms() {
        let (d, t) = parse_delayed(&bs("$delayed/10/a/b"), 10).unwrap().unwrap();
        assert_eq!((d, &*t), (10, "a/b"));
        let (d, _) = parse_delayed(&bs("$delayed/4294967/x"), 10).unwrap().unwrap();
        assert_eq!(d, MAX_DELAY_SECS);
        assert!(parse_delayed(&bs("plain/topic"), 10).is_none());
        for bad in [
            "$delayed/10",
            "$delayed//a",
            "$delayed/-1/a",
            "$delayed/1.5/a",
            "$delayed/4294968/a",
            "$delayed/99999999999999999999/a",
            "$delayed/5/",
            "$delayed/5/$SYS/x",
        ] {
            assert!(matches!(parse_delayed(&bs(bad), 10), Some(Err(TopicError::InvalidDelayed(_)))), "{bad}");
        }
    }

    #[test]
    fn matching() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("+/+", "/x", true),
            ("/+", "/x", true),
            ("+", "/x", false),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/+/c", "a//c", true),
            ("a/b", "a/b/", false),
        ];
        for (f, t, want) in cases {
            assert_eq!(matches(f, t), want, "{f} vs {t}");
        }
    }
}
