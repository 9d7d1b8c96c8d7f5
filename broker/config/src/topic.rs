//! Topic name and filter rules (MQTT 5.0 §4.7), shared by the broker (which enforces them on
//! every PUBLISH and SUBSCRIBE), this crate (conflation filters) and the operator (ACL rules).

/// Why a topic name or filter is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Zero-length topic or filter.
    #[error("topic is empty")]
    Empty,
    /// `+` or `#` in a topic name.
    #[error("topic name contains a wildcard")]
    WildcardInName,
    /// U+0000 in a topic.
    #[error("topic contains a null character")]
    NullCharacter,
    /// More levels than allowed.
    #[error("topic has {levels} levels, more than the limit of {max}")]
    TooManyLevels {
        /// Levels in the topic.
        levels: usize,
        /// Configured maximum.
        max: usize,
    },
    /// `#` not alone in the last level, or `+` sharing a level.
    #[error("wildcard {0:?} must occupy a whole level, and '#' must be last")]
    MisplacedWildcard(char),
    /// `$share/<group>/<filter>` with an empty or invalid group or filter.
    #[error("invalid shared subscription: {0}")]
    InvalidShare(&'static str),
    /// `$delayed/<seconds>/<topic>` with a bad delay or topic.
    #[error("invalid delayed publish: {0}")]
    InvalidDelayed(String),
}

/// Checks a topic name for PUBLISH.
pub fn validate_topic_name(topic: &str, max_levels: usize) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    if topic.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    check_levels(topic, max_levels)
}

fn check_levels(topic: &str, max_levels: usize) -> Result<(), TopicError> {
    let levels = topic.bytes().filter(|b| *b == b'/').count() + 1;
    if levels > max_levels {
        return Err(TopicError::TooManyLevels { levels, max: max_levels });
    }
    Ok(())
}

/// Checks a plain topic filter (without a `$share` prefix).
pub fn validate_filter(filter: &str, max_levels: usize) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MisplacedWildcard('#'));
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::MisplacedWildcard('+'));
        }
    }
    check_levels(filter, max_levels)
}

/// Whether `filter` matches `topic`, including the rule that filters starting with a wildcard
/// do not match `$` topics.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}
