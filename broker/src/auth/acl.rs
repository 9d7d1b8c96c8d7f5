//! The Mosquitto ACL file and the per-client access checks.
//!
//! Grammar (one statement per line; blank lines and lines starting with `#` are ignored):
//!
//! ```text
//! topic   [read|write|readwrite|deny] <filter>
//! pattern [read|write|readwrite|deny] <filter with %u and %c>
//! user    <username>
//! ```
//!
//! The access word is optional (default `readwrite`) unless the filter contains a space. `topic`
//! lines before the first `user` line are the general rules; after a `user` line they belong to
//! that user (a user named twice gets both blocks). `pattern` lines apply to every client
//! wherever they appear, with `%u` replaced by the username and `%c` by the client id.
//!
//! Which rules apply to a client (checked against Debian's mosquitto 2.0.11, see the tests):
//!
//! - anonymous client (no username): the general `topic` rules, plus the patterns that do not
//!   use `%u`;
//! - username with a `user` block: that block plus the patterns;
//! - username without a `user` block: the patterns only (not the general rules: those are for
//!   anonymous clients, as in Mosquitto).
//!
//! Among the rules that apply, every `deny` is checked before any grant: a topic matched by a
//! deny is refused whatever grants it. (Mosquitto checks a user's own deny, then its grants, then
//! the patterns' denies, so a pattern deny cannot override a user's own grant there; FleetMQ is
//! stricter.) Nothing applies: refused.
//!
//! `$SYS`: publishing is refused for every client, with or without an ACL file; reading follows
//! the rules. A rule whose first level is a wildcard (`#`, `+/...`) does not match topics that
//! start with `$`, exactly as for subscriptions, so `$SYS` needs an explicit `$SYS/...` rule.
//!
//! SUBSCRIBE is granted when the filter can receive at least one readable topic: it overlaps a
//! read grant and that overlap is not entirely covered by one deny rule. So a client with `read
//! sensors/#` may subscribe to `#`, and delivery ([`ClientAcl::can_read`], checked for every
//! message) passes only `sensors/...`. A filter that overlaps no read rule is refused (Mosquitto
//! 2.0 grants every SUBSCRIBE and silently delivers nothing; a refusal tells the client).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use fleetmq_config::topic;

use super::{AuthError, is_sys_topic};

/// The access of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Subscribe and receive.
    Read,
    /// Publish.
    Write,
    /// Both.
    ReadWrite,
    /// Neither, overriding any grant.
    Deny,
}

impl Access {
    fn parse(word: &str) -> Option<Access> {
        match word {
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            "readwrite" => Some(Access::ReadWrite),
            "deny" => Some(Access::Deny),
            _ => None,
        }
    }
}

/// One level of a compiled filter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(Box<str>),
    /// `+`
    One,
    /// `#`
    Rest,
}

/// A topic filter split into levels once, at load or per client, so the per-message check
/// only walks the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Filter {
    levels: Box<[Level]>,
}

impl Filter {
    /// Compiles a filter that already passed `topic::validate_filter`.
    fn compile(filter: &str) -> Filter {
        let levels = filter
            .split('/')
            .map(|level| match level {
                "+" => Level::One,
                "#" => Level::Rest,
                literal => Level::Literal(literal.into()),
            })
            .collect();
        Filter { levels }
    }

    fn wildcard_first(&self) -> bool {
        matches!(self.levels.first(), Some(Level::One | Level::Rest))
    }

    /// Whether the topic name `topic` matches (MQTT matching, including the rule that a
    /// filter starting with a wildcard does not match `$` topics). No allocation.
    fn matches(&self, topic: &str) -> bool {
        if topic.starts_with('$') && self.wildcard_first() {
            return false;
        }
        let mut names = topic.split('/');
        for level in self.levels.iter() {
            match level {
                Level::Rest => return true,
                Level::One => {
                    if names.next().is_none() {
                        return false;
                    }
                }
                Level::Literal(literal) => {
                    if names.next() != Some(&**literal) {
                        return false;
                    }
                }
            }
        }
        names.next().is_none()
    }

    /// Whether every topic `inner` matches is also matched by `self`.
    fn covers(&self, inner: &[Level]) -> bool {
        // A wildcard-first filter matches no `$` topic, so it covers no filter that has some.
        if self.wildcard_first() && starts_with_dollar_literal(inner) {
            return false;
        }
        levels_cover(&self.levels, inner)
    }

    /// The filter matching exactly the topics both match, if any.
    fn intersection(&self, other: &Filter) -> Option<Vec<Level>> {
        if dollar_mismatch(&self.levels, &other.levels) {
            return None;
        }
        let mut out = Vec::with_capacity(self.levels.len().max(other.levels.len()));
        levels_intersect(&self.levels, &other.levels, &mut out).then_some(out)
    }
}

fn starts_with_dollar_literal(levels: &[Level]) -> bool {
    matches!(levels.first(), Some(Level::Literal(l)) if l.starts_with('$'))
}

fn starts_with_wildcard(levels: &[Level]) -> bool {
    matches!(levels.first(), Some(Level::One | Level::Rest))
}

/// One side only matches `$` topics and the other matches none.
fn dollar_mismatch(a: &[Level], b: &[Level]) -> bool {
    (starts_with_wildcard(a) && starts_with_dollar_literal(b))
        || (starts_with_wildcard(b) && starts_with_dollar_literal(a))
}

fn meet(a: &Level, b: &Level) -> Option<Level> {
    match (a, b) {
        (Level::One, Level::One) => Some(Level::One),
        (Level::One, Level::Literal(l)) | (Level::Literal(l), Level::One) => Some(Level::Literal(l.clone())),
        (Level::Literal(x), Level::Literal(y)) if x == y => Some(Level::Literal(x.clone())),
        _ => None,
    }
}

fn levels_intersect(a: &[Level], b: &[Level], out: &mut Vec<Level>) -> bool {
    match (a.first(), b.first()) {
        (Some(Level::Rest), _) => {
            out.extend_from_slice(b);
            true
        }
        (_, Some(Level::Rest)) => {
            out.extend_from_slice(a);
            true
        }
        (None, None) => true,
        (None, Some(_)) | (Some(_), None) => false,
        (Some(x), Some(y)) => match meet(x, y) {
            Some(level) => {
                out.push(level);
                levels_intersect(&a[1..], &b[1..], out)
            }
            None => false,
        },
    }
}

fn levels_cover(outer: &[Level], inner: &[Level]) -> bool {
    match (outer.first(), inner.first()) {
        (Some(Level::Rest), _) => true,
        (None, None) => true,
        // `inner` goes deeper (or ends in `#`, which matches deeper topics) than `outer` does.
        (None, Some(_)) => false,
        // `outer` needs another level that `inner`'s topics do not have.
        (Some(_), None) => false,
        (Some(Level::One), Some(Level::One | Level::Literal(_))) => levels_cover(&outer[1..], &inner[1..]),
        (Some(Level::Literal(x)), Some(Level::Literal(y))) if x == y => {
            levels_cover(&outer[1..], &inner[1..])
        }
        _ => false,
    }
}

/// The resolved rules of one client: what the per-message checks walk.
#[derive(Debug, Default, PartialEq, Eq)]
struct RuleSet {
    deny: Vec<Filter>,
    read: Vec<Filter>,
    write: Vec<Filter>,
}

impl RuleSet {
    fn add(&mut self, access: Access, filter: Filter) {
        match access {
            Access::Deny => self.deny.push(filter),
            Access::Read => self.read.push(filter),
            Access::Write => self.write.push(filter),
            Access::ReadWrite => {
                self.read.push(filter.clone());
                self.write.push(filter);
            }
        }
    }

    fn extend(&mut self, other: &RuleSet) {
        self.deny.extend(other.deny.iter().cloned());
        self.read.extend(other.read.iter().cloned());
        self.write.extend(other.write.iter().cloned());
    }

    fn denied(&self, topic: &str) -> bool {
        self.deny.iter().any(|f| f.matches(topic))
    }
}

/// A `pattern` line, kept as text until a client's username and client id are known.
#[derive(Debug, Clone)]
struct Pattern {
    access: Access,
    template: String,
    uses_user: bool,
    uses_client: bool,
}

impl Pattern {
    /// The filter for one client, or `None` when the pattern does not apply to it.
    ///
    /// A pattern using `%u` does not apply without a username (Mosquitto skips them too) or
    /// with an empty one, one using `%c` not with an empty client id. A grant does not apply when the value it
    /// would insert contains `+`, `#` or `/`: those would turn a client's own subtree into a
    /// wildcard or into someone else's subtree (Mosquitto refuses `+`/`#` for the same reason,
    /// CVE-2017-7650). A deny with such a value still applies, widened to `#` from that level
    /// on, so it refuses at least what it was meant to.
    fn expand(&self, username: Option<&str>, client_id: &str) -> Option<Filter> {
        let user = if self.uses_user { Some(username.filter(|u| !u.is_empty())?) } else { None };
        if self.uses_client && client_id.is_empty() {
            return None;
        }
        let dangerous = |v: &str| v.contains(['+', '#', '/']);
        let risky = user.is_some_and(dangerous) || (self.uses_client && dangerous(client_id));
        if risky && self.access != Access::Deny {
            return None;
        }
        let mut levels = Vec::new();
        for level in self.template.split('/') {
            if level.contains('%') {
                let (text, widened) = substitute(level, user.unwrap_or_default(), client_id, &dangerous);
                if widened {
                    levels.push(Level::Rest);
                    break;
                }
                levels.push(Level::Literal(text.into()));
            } else {
                levels.push(match level {
                    "+" => Level::One,
                    "#" => Level::Rest,
                    literal => Level::Literal(literal.into()),
                });
            }
        }
        Some(Filter { levels: levels.into() })
    }
}

/// Replaces `%u` and `%c` in one level, left to right (a username containing `%c` is not
/// substituted again). Returns whether a dangerous value was inserted.
fn substitute(
    level: &str,
    username: &str,
    client_id: &str,
    dangerous: &dyn Fn(&str) -> bool,
) -> (String, bool) {
    let mut out = String::with_capacity(level.len() + username.len().max(client_id.len()));
    let mut widened = false;
    let mut rest = level;
    while let Some(pos) = rest.find('%') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        match after.chars().next() {
            Some('u') => {
                widened |= dangerous(username);
                out.push_str(username);
                rest = &after[1..];
            }
            Some('c') => {
                widened |= dangerous(client_id);
                out.push_str(client_id);
                rest = &after[1..];
            }
            _ => {
                out.push('%');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    (out, widened)
}

/// A parsed ACL file, or the "no ACL file" policy. Immutable: a reload builds a new one; the
/// broker then re-resolves each connected client's [`ClientAcl`].
#[derive(Debug)]
pub struct Acl {
    origin: Option<String>,
    /// `topic` lines before the first `user` line (anonymous clients).
    general: Arc<RuleSet>,
    users: HashMap<String, Arc<RuleSet>>,
    patterns: Vec<Pattern>,
    /// Rule set for usernames without a block when there are no patterns (shared, empty).
    nothing: Arc<RuleSet>,
    warnings: Vec<String>,
}

impl Acl {
    /// The policy without an ACL file: every topic may be published and read, except that
    /// `$SYS` is never writable.
    pub fn allow_all() -> Acl {
        Acl {
            origin: None,
            general: Arc::default(),
            users: HashMap::new(),
            patterns: Vec::new(),
            nothing: Arc::default(),
            warnings: Vec::new(),
        }
    }

    /// Reads and parses the ACL file at `path`; errors name the path.
    pub fn load(path: impl AsRef<Path>) -> Result<Acl, AuthError> {
        let path = path.as_ref();
        let text = super::read_text(path)?;
        Acl::parse(&text, &path.display().to_string())
    }

    /// Parses ACL text; `origin` names it in errors. One bad line refuses the whole file.
    pub fn parse(text: &str, origin: &str) -> Result<Acl, AuthError> {
        let mut general = RuleSet::default();
        let mut users: HashMap<String, RuleSet> = HashMap::new();
        let mut patterns = Vec::new();
        let mut warnings = Vec::new();
        let mut current_user: Option<String> = None;
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason: String| AuthError::parse(origin, line_no, reason);
            let (keyword, rest) = match line.split_once(char::is_whitespace) {
                Some((keyword, rest)) => (keyword, rest.trim_start()),
                None => (line, ""),
            };
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("`user` without a name".into()));
                    }
                    current_user = Some(rest.to_string());
                    users.entry(rest.to_string()).or_default();
                }
                "topic" | "pattern" => {
                    let (access, filter) = access_and_filter(keyword, rest).map_err(&err)?;
                    topic::validate_filter(filter, usize::MAX)
                        .map_err(|e| err(format!("invalid filter {filter:?}: {e}")))?;
                    let has_placeholder = filter.contains("%u") || filter.contains("%c");
                    if keyword == "topic" {
                        if has_placeholder {
                            warnings.push(format!(
                                "{origin}:{line_no}: `topic` does not substitute %u or %c; did you mean `pattern`?"
                            ));
                        }
                        let rules = match &current_user {
                            Some(user) => users.entry(user.clone()).or_default(),
                            None => &mut general,
                        };
                        rules.add(access, Filter::compile(filter));
                    } else {
                        if !has_placeholder {
                            warnings.push(format!(
                                "{origin}:{line_no}: pattern without %u or %c applies to every client, anonymous ones included"
                            ));
                        }
                        patterns.push(Pattern {
                            access,
                            template: filter.to_string(),
                            uses_user: filter.contains("%u"),
                            uses_client: filter.contains("%c"),
                        });
                    }
                }
                other => {
                    return Err(err(format!("unknown keyword {other:?} (expected topic, user or pattern)")));
                }
            }
        }
        Ok(Acl {
            origin: Some(origin.to_string()),
            general: Arc::new(general),
            users: users.into_iter().map(|(name, rules)| (name, Arc::new(rules))).collect(),
            patterns,
            nothing: Arc::default(),
            warnings,
        })
    }

    /// The rules of one client, resolved once (`%u`/`%c` substituted, filters compiled): keep
    /// it with the connection and ask it on every PUBLISH, SUBSCRIBE and delivery. Resolve
    /// again after a reload.
    pub fn client(&self, username: Option<&str>, client_id: &str) -> ClientAcl {
        if self.origin.is_none() {
            return ClientAcl { rules: None };
        }
        let base = match username {
            None => &self.general,
            Some(user) => self.users.get(user).unwrap_or(&self.nothing),
        };
        let expanded: Vec<(Access, Filter)> = self
            .patterns
            .iter()
            .filter_map(|p| p.expand(username, client_id).map(|f| (p.access, f)))
            .collect();
        if expanded.is_empty() {
            // The common case (operator-rendered files have no patterns): share, no copy.
            return ClientAcl { rules: Some(Arc::clone(base)) };
        }
        let mut rules = RuleSet::default();
        rules.extend(base);
        for (access, filter) in expanded {
            rules.add(access, filter);
        }
        ClientAcl { rules: Some(Arc::new(rules)) }
    }

    /// Whether the client may publish to `topic`. For hot paths use [`Acl::client`] once.
    pub fn can_publish(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        self.client(username, client_id).can_publish(topic)
    }

    /// Whether the client may subscribe to `filter`. See [`ClientAcl::can_subscribe`].
    pub fn can_subscribe(&self, username: Option<&str>, client_id: &str, filter: &str) -> bool {
        self.client(username, client_id).can_subscribe(filter)
    }

    /// Whether a message on `topic` may be delivered to the client.
    pub fn can_read(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        self.client(username, client_id).can_read(topic)
    }

    /// Whether this came from a file (false for [`Acl::allow_all`]).
    pub fn is_file(&self) -> bool {
        self.origin.is_some()
    }

    /// The file it came from, if any.
    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    /// Users with a `user` block.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// Lines that are valid but probably not what was meant (`file:line: text`), for the log.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// Splits `[access] filter`. The access word is optional; without it the rest is the filter,
/// which then must be one word, so a misspelt access (`topic rw a/b`) is an error rather than
/// a rule for the topic "rw a/b".
fn access_and_filter<'a>(keyword: &str, rest: &'a str) -> Result<(Access, &'a str), String> {
    if rest.is_empty() {
        return Err(format!("`{keyword}` without a topic filter"));
    }
    let (first, after) = match rest.split_once(char::is_whitespace) {
        Some((first, after)) => (first, after.trim()),
        None => (rest, ""),
    };
    match Access::parse(first) {
        Some(_) if after.is_empty() => Err(format!("`{keyword} {first}` without a topic filter")),
        Some(access) => Ok((access, after)),
        None if after.is_empty() => Ok((Access::ReadWrite, first)),
        None => Err(format!("unknown access {first:?} (expected read, write, readwrite or deny)")),
    }
}

/// One client's resolved permissions. Cheap to clone (shared); checks do not allocate, except
/// [`ClientAcl::can_subscribe`] (once per SUBSCRIBE, not per message).
#[derive(Debug, Clone)]
pub struct ClientAcl {
    /// `None`: no ACL file, everything allowed except `$SYS` writes.
    rules: Option<Arc<RuleSet>>,
}

impl ClientAcl {
    /// The permissions when there is no ACL file.
    pub fn allow_all() -> ClientAcl {
        ClientAcl { rules: None }
    }

    /// Whether rules apply (an ACL file is loaded). Without one, [`ClientAcl::can_read`] is
    /// always true and [`ClientAcl::can_publish`] refuses only `$SYS`.
    pub fn has_rules(&self) -> bool {
        self.rules.is_some()
    }

    /// Whether the client may publish to the topic name `topic`. `$SYS` is never writable:
    /// this is the one place that rule lives.
    pub fn can_publish(&self, topic: &str) -> bool {
        if is_sys_topic(topic) {
            return false;
        }
        match &self.rules {
            None => true,
            Some(rules) => !rules.denied(topic) && rules.write.iter().any(|f| f.matches(topic)),
        }
    }

    /// Whether a message on the topic name `topic` may be delivered to the client (every
    /// delivery, including retained messages and wills).
    pub fn can_read(&self, topic: &str) -> bool {
        match &self.rules {
            None => true,
            Some(rules) => !rules.denied(topic) && rules.read.iter().any(|f| f.matches(topic)),
        }
    }

    /// Whether the client may subscribe to `filter` (a `$share/<group>/` prefix is ignored):
    /// true when the filter overlaps a read grant and the overlap is not wholly denied. A
    /// granted filter may be wider than the rules; [`ClientAcl::can_read`] then filters the
    /// messages. `filter` must already be valid (the broker validates SUBSCRIBE first).
    pub fn can_subscribe(&self, filter: &str) -> bool {
        let Some(rules) = &self.rules else {
            return true;
        };
        let filter = strip_share(filter);
        let wanted = Filter::compile(filter);
        rules.read.iter().any(|grant| match wanted.intersection(grant) {
            Some(both) => !rules.deny.iter().any(|deny| deny.covers(&both)),
            None => false,
        })
    }
}

/// `$share/<group>/<filter>` → `<filter>`; anything else unchanged.
fn strip_share(filter: &str) -> &str {
    filter.strip_prefix("$share/").and_then(|rest| rest.split_once('/')).map_or(filter, |(_, inner)| inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rendered by `fleetmq-operator render` from examples/users.yaml.
    const OPERATOR_RENDER: &str = include_str!("testdata/operator-render.acl");

    fn acl(text: &str) -> Acl {
        Acl::parse(text, "acl").expect("valid ACL")
    }

    fn parse_err(text: &str) -> String {
        Acl::parse(text, "acl").expect_err("invalid ACL").to_string()
    }

    #[test]
    fn filter_matching() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/+", "a/b", true),
            ("a/+", "a", false),
            ("a/+", "a/", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/broker/uptime", true),
            ("+/+", "/x", true),
            ("a/b", "a/b/", false),
        ];
        for (filter, topic, expected) in cases {
            assert_eq!(Filter::compile(filter).matches(topic), expected, "{filter} vs {topic}");
            // Same answer as the shared topic helpers.
            assert_eq!(topic::matches(filter, topic), expected, "config helper: {filter} vs {topic}");
        }
    }

    #[test]
    fn filter_overlap_intersection_and_cover() {
        let f = Filter::compile;
        let show = |levels: Option<Vec<Level>>| {
            levels.map(|l| {
                l.iter()
                    .map(|x| match x {
                        Level::Literal(s) => s.to_string(),
                        Level::One => "+".into(),
                        Level::Rest => "#".into(),
                    })
                    .collect::<Vec<_>>()
                    .join("/")
            })
        };
        let cases = [
            ("#", "sensors/#", Some("sensors/#")),
            ("sensors/+/temp", "sensors/#", Some("sensors/+/temp")),
            ("a/+", "+/b", Some("a/b")),
            ("a/#", "a", Some("a")),
            ("a/+", "a", None),
            ("a/b", "a/c", None),
            ("#", "$SYS/#", None),
            ("$SYS/#", "$SYS/broker/+", Some("$SYS/broker/+")),
            ("+/#", "x/y/z", Some("x/y/z")),
        ];
        for (a, b, expected) in cases {
            assert_eq!(show(f(a).intersection(&f(b))).as_deref(), expected, "{a} ∩ {b}");
            assert_eq!(show(f(b).intersection(&f(a))).as_deref(), expected, "{b} ∩ {a}");
        }
        let covers = [
            ("#", "a/b", true),
            ("#", "$SYS/x", false),
            ("a/#", "a", true),
            ("a/#", "a/+/c", true),
            ("a/+", "a/b", true),
            ("a/+", "a/#", false),
            ("a/+", "a", false),
            ("a/b", "a/+", false),
            ("a", "a/#", false),
            ("a/b", "a/b", true),
            ("$SYS/#", "$SYS/broker", true),
        ];
        for (outer, inner, expected) in covers {
            assert_eq!(f(outer).covers(&f(inner).levels), expected, "{outer} covers {inner}");
        }
    }

    #[test]
    fn without_a_file_everything_but_sys_writes_is_allowed() {
        for acl in [Acl::allow_all().client(None, "c"), ClientAcl::allow_all()] {
            assert!(acl.can_publish("a/b"));
            assert!(acl.can_read("a/b"));
            assert!(acl.can_subscribe("#"));
            assert!(acl.can_read("$SYS/broker/uptime"));
            assert!(acl.can_subscribe("$SYS/#"));
            assert!(!acl.can_publish("$SYS/broker/uptime"));
            assert!(!acl.can_publish("$SYS"));
        }
        let all = Acl::allow_all();
        assert!(!all.is_file());
        assert!(all.can_publish(Some("u"), "c", "x"));
        assert!(!all.can_publish(Some("u"), "c", "$SYS/x"));
    }

    #[test]
    fn operator_rendered_file() {
        let acl = acl(OPERATOR_RENDER);
        assert!(acl.warnings().is_empty(), "{:?}", acl.warnings());
        let mut users: Vec<_> = acl.users().collect();
        users.sort();
        assert_eq!(users, ["grafana-dashboard", "sensor-gateway"]);
        let gw = acl.client(Some("sensor-gateway"), "gw-1");
        assert!(gw.can_publish("telemetry/dev1/state"));
        assert!(!gw.can_publish("telemetry/dev1/other"));
        assert!(!gw.can_publish("telemetry/secret/state"), "deny before grant");
        assert!(!gw.can_read("telemetry/dev1/state"), "write-only");
        assert!(gw.can_read("commands/gateway/reboot"));
        assert!(gw.can_subscribe("commands/gateway/#"));
        assert!(!gw.can_subscribe("telemetry/#"), "no read rule overlaps");
        let dash = acl.client(Some("grafana-dashboard"), "grafana");
        assert!(dash.can_subscribe("telemetry/#"));
        assert!(dash.can_read("$SYS/broker/uptime"));
        assert!(!dash.can_publish("$SYS/broker/uptime"), "$SYS is read-only even with a rule");
        assert!(!dash.can_publish("telemetry/x"));
        // Anonymous clients and unknown users get nothing from this file.
        for client in [acl.client(None, "anon"), acl.client(Some("mallory"), "m")] {
            assert!(!client.can_publish("telemetry/dev1/state"));
            assert!(!client.can_read("telemetry/dev1/state"));
            assert!(!client.can_subscribe("#"));
        }
    }

    /// Cases checked against Debian's mosquitto 2.0.11 (`mosquitto -c` with this acl_file and a
    /// password file, then mosquitto_pub/mosquitto_sub; denials read from the broker log). Where
    /// FleetMQ deliberately differs the assertion says so.
    const MOSQUITTO_CHECKED: &str = "\
# general
topic readwrite public/#
topic read anon/ro

user alice
topic readwrite alice/#
topic read sensors/#
topic deny sensors/secret/#
topic readwrite #

user bob
topic readwrite bob/#

user carol
topic readwrite carol/#
topic read $SYS/#

pattern readwrite users/%u/#
pattern readwrite clients/%c/#
pattern deny alice/private/#
";

    #[test]
    fn semantics_confirmed_against_mosquitto() {
        let acl = acl(MOSQUITTO_CHECKED);
        // Anonymous: general lines apply (mosquitto: publish to public/x allowed, read of the
        // retained public/p delivered).
        assert!(acl.can_publish(None, "n1", "public/x"));
        assert!(acl.can_read(None, "n1", "public/p"));
        assert!(acl.can_read(None, "n1", "anon/ro"));
        assert!(!acl.can_publish(None, "n1", "anon/ro"));
        // Anonymous: %c patterns apply (mosquitto allowed clients/n1/x), %u patterns do not
        // (mosquitto denied users/zed/x).
        assert!(acl.can_publish(None, "n1", "clients/n1/x"));
        assert!(!acl.can_publish(None, "n1", "clients/n2/x"));
        assert!(!acl.can_publish(None, "n1", "users/zed/x"));
        // A username without a user block does NOT get the general lines (mosquitto denied
        // zed's publish to public/x and delivered nothing on public/#), only the patterns
        // (mosquitto allowed users/zed/x).
        assert!(!acl.can_publish(Some("zed"), "z1", "public/x"));
        assert!(!acl.can_read(Some("zed"), "z1", "public/p"));
        assert!(acl.can_publish(Some("zed"), "z1", "users/zed/x"));
        assert!(!acl.can_publish(Some("zed"), "z1", "users/bob/x"));
        // A user with a block does not get the general lines either (bob denied public/x).
        assert!(!acl.can_publish(Some("bob"), "b1", "public/x"));
        // Deny before grant inside a block: alice's `#` subscription received sensors/t and
        // other/t but not the retained sensors/secret/k.
        assert!(acl.can_read(Some("alice"), "s1", "sensors/t"));
        assert!(acl.can_read(Some("alice"), "s1", "other/t"));
        assert!(!acl.can_read(Some("alice"), "s1", "sensors/secret/k"));
        // `#` does not reach $SYS: alice (readwrite #) got no $SYS messages, carol (read
        // $SYS/#) did; both were refused publishing to $SYS/x.
        assert!(!acl.can_read(Some("alice"), "s1", "$SYS/broker/uptime"));
        assert!(acl.can_read(Some("carol"), "c1", "$SYS/broker/uptime"));
        assert!(!acl.can_publish(Some("alice"), "a1", "$SYS/x"));
        assert!(!acl.can_publish(Some("carol"), "c1", "$SYS/x"));
        // Deliberate difference: mosquitto let alice publish to alice/private/x because it
        // checks her own grants (`readwrite #`) before the patterns' denies. FleetMQ checks
        // every deny first.
        assert!(!acl.can_publish(Some("alice"), "a1", "alice/private/x"));
        assert!(acl.can_publish(Some("alice"), "a1", "alice/x"));
        // Deliberate difference: mosquitto 2.0.11 granted bob's SUBSCRIBE to `nothing/#`
        // (SUBACK 0) and then delivered nothing; FleetMQ refuses a filter no read rule overlaps.
        assert!(!acl.can_subscribe(Some("bob"), "s9", "nothing/#"));
        assert!(acl.can_subscribe(Some("bob"), "s9", "#"), "overlaps bob/#");
        assert_eq!(acl.warnings().len(), 1, "{:?}", acl.warnings());
        assert!(acl.warnings()[0].starts_with("acl:20: pattern without %u or %c"), "{:?}", acl.warnings());
    }

    #[test]
    fn deny_before_grant_regardless_of_order() {
        for text in [
            "user u\ntopic readwrite a/#\ntopic deny a/secret/#\n",
            "user u\ntopic deny a/secret/#\ntopic readwrite a/#\n",
            "user u\ntopic readwrite a/#\npattern deny a/secret/#\n",
        ] {
            let c = acl(text).client(Some("u"), "c");
            assert!(c.can_publish("a/open"), "{text}");
            assert!(c.can_read("a/open"), "{text}");
            assert!(!c.can_publish("a/secret/x"), "{text}");
            assert!(!c.can_read("a/secret"), "{text}: a/secret/# also matches a/secret");
            assert!(!c.can_subscribe("a/secret/#"), "{text}: wholly denied");
            assert!(!c.can_subscribe("a/secret/+/x"), "{text}: wholly denied");
            assert!(c.can_subscribe("a/#"), "{text}: partly readable");
        }
    }

    #[test]
    fn access_kinds() {
        let acl = acl("user u\ntopic read r/#\ntopic write w/#\ntopic readwrite rw/#\ntopic rw2/#\n");
        let c = acl.client(Some("u"), "c");
        assert!(c.can_read("r/x") && !c.can_publish("r/x"));
        assert!(!c.can_read("w/x") && c.can_publish("w/x"));
        assert!(c.can_read("rw/x") && c.can_publish("rw/x"));
        assert!(c.can_read("rw2/x") && c.can_publish("rw2/x"), "access defaults to readwrite");
        assert!(!c.can_read("other") && !c.can_publish("other"));
        assert!(!c.can_subscribe("w/#"), "write-only is not readable");
    }

    #[test]
    fn subscriptions_wider_and_narrower_than_rules() {
        let acl = acl("user u\ntopic read sensors/#\ntopic deny sensors/secret/#\ntopic read cmd/+/state\n");
        let c = acl.client(Some("u"), "c");
        // Wider than the rule: granted, and delivery filters.
        assert!(c.can_subscribe("#"));
        assert!(c.can_read("sensors/t1"));
        assert!(!c.can_read("other/t1"));
        assert!(c.can_subscribe("+/t1"), "overlaps sensors/# at sensors/t1");
        assert!(c.can_subscribe("cmd/#"), "overlaps cmd/+/state");
        // Narrower or equal: granted.
        assert!(c.can_subscribe("sensors/#"));
        assert!(c.can_subscribe("sensors/+/temp"));
        assert!(c.can_subscribe("cmd/dev1/state"));
        // Disjoint: refused.
        assert!(!c.can_subscribe("cmd/dev1/config"));
        assert!(!c.can_subscribe("other/#"));
        assert!(!c.can_subscribe("cmd/+"));
        // Only the denied part: refused.
        assert!(!c.can_subscribe("sensors/secret/#"));
        assert!(!c.can_subscribe("sensors/secret/k"));
        // $SYS needs its own rule even for `#`-style filters.
        assert!(!c.can_subscribe("$SYS/#"));
        // Shared subscriptions are checked on their filter.
        assert!(c.can_subscribe("$share/g/sensors/#"));
        assert!(!c.can_subscribe("$share/g/other/#"));
    }

    #[test]
    fn sys_reads_follow_rules_writes_never() {
        let acl = acl("user mon\ntopic readwrite $SYS/#\ntopic readwrite #\n");
        let c = acl.client(Some("mon"), "c");
        assert!(c.can_read("$SYS/broker/clients/connected"));
        assert!(c.can_subscribe("$SYS/#"));
        assert!(!c.can_publish("$SYS/broker/clients/connected"));
        assert!(c.can_publish("normal/topic"));
        // `#` alone does not grant $SYS reads.
        let plain = self::acl("user u\ntopic read #\n").client(Some("u"), "c");
        assert!(!plain.can_read("$SYS/broker/uptime"));
        assert!(!plain.can_subscribe("$SYS/#"));
        assert!(plain.can_subscribe("#"));
        // Other `$` topics follow the rules like $SYS reads do.
        let dollar = self::acl("user u\ntopic readwrite $app/#\n").client(Some("u"), "c");
        assert!(dollar.can_publish("$app/x"));
    }

    #[test]
    fn patterns_substitute_username_and_client_id() {
        let acl = acl(
            "pattern readwrite users/%u/#\npattern read devices/%c/cmd\npattern write %u/%c\npattern read pre-%u-post/x\n",
        );
        let c = acl.client(Some("alice"), "dev1");
        assert!(c.can_publish("users/alice/a/b"));
        assert!(c.can_read("users/alice"));
        assert!(!c.can_publish("users/bob/a"));
        assert!(c.can_read("devices/dev1/cmd"));
        assert!(!c.can_read("devices/dev2/cmd"));
        assert!(c.can_publish("alice/dev1"));
        assert!(!c.can_publish("alice/dev2"));
        assert!(c.can_read("pre-alice-post/x"), "substitution inside a level, as Mosquitto does");
        assert!(c.can_subscribe("users/alice/#"));
        assert!(c.can_subscribe("users/+/x"), "overlaps users/alice/#");
        assert!(!c.can_subscribe("users/bob/#"));
        // Anonymous: %u patterns skipped, %c ones apply.
        let anon = acl.client(None, "dev1");
        assert!(!anon.can_publish("users/alice/x"));
        assert!(anon.can_read("devices/dev1/cmd"));
        assert!(!anon.can_publish("alice/dev1"));
        // An empty client id matches no %c pattern.
        let empty = acl.client(Some("alice"), "");
        assert!(!empty.can_read("devices//cmd"));
        assert!(empty.can_publish("users/alice/x"));
        // An empty username matches no %u pattern (no shared `users//#` for all of them).
        let nameless = acl.client(Some(""), "dev1");
        assert!(!nameless.can_publish("users//x"));
        assert!(nameless.can_read("devices/dev1/cmd"));
    }

    #[test]
    fn substituted_values_are_not_reinterpreted() {
        let acl = acl("pattern readwrite u/%u/#\n");
        // A username containing "%c" is inserted literally, not substituted again.
        let c = acl.client(Some("a%cb"), "X");
        assert!(c.can_publish("u/a%cb/t"));
        assert!(!c.can_publish("u/aXb/t"));
        // A lone '%' that starts no placeholder stays.
        let pct = self::acl("pattern read a/100%/%u\n").client(Some("z"), "c");
        assert!(pct.can_read("a/100%/z"));
    }

    #[test]
    fn wildcards_and_slashes_in_identities_do_not_widen_grants() {
        let acl = acl(
            "pattern readwrite users/%u/#\npattern readwrite clients/%c/#\npattern deny private/%u/#\ntopic readwrite private/#\nuser a+\ntopic readwrite private/#\nuser a/b\ntopic readwrite private/#\n",
        );
        // '+' / '#' in a username: the %u grant does not apply (no `users/+/#`).
        let plus = acl.client(Some("a+"), "c1");
        assert!(!plus.can_publish("users/x/t"));
        assert!(!plus.can_publish("users/a+/t"));
        assert!(plus.can_publish("clients/c1/t"), "patterns not using the value still apply");
        // ... but the %u deny applies, widened: everything under private/ is refused.
        assert!(!plus.can_publish("private/x/t"));
        assert!(!plus.can_read("private/a/t"));
        // '/' in a username cannot reach into another user's subtree.
        let slash = acl.client(Some("a/b"), "c2");
        assert!(!slash.can_publish("users/a/b/t"));
        assert!(!slash.can_publish("private/a/b/t"));
        assert!(!slash.can_publish("private/zzz"), "widened deny");
        // Same for client ids.
        let cid = acl.client(None, "#");
        assert!(!cid.can_publish("clients/x/t"));
        assert!(!cid.can_publish("clients/#/t"));
        let cid = acl.client(None, "x/y");
        assert!(!cid.can_publish("clients/x/y/t"));
        // A normal identity is unaffected.
        let ok = acl.client(Some("carl"), "c3");
        assert!(ok.can_publish("users/carl/t"));
        assert!(ok.can_publish("clients/c3/t"));
    }

    #[test]
    fn anonymous_and_unknown_users() {
        let acl =
            acl("topic read public/#\npattern read clients/%c/#\nuser alice\ntopic readwrite alice/#\n");
        let anon = acl.client(None, "anon-1");
        assert!(anon.can_read("public/news"));
        assert!(!anon.can_publish("public/news"));
        assert!(anon.can_read("clients/anon-1/x"));
        assert!(!anon.can_read("alice/x"));
        let unknown = acl.client(Some("mallory"), "m-1");
        assert!(!unknown.can_read("public/news"), "general lines are for anonymous clients only");
        assert!(unknown.can_read("clients/m-1/x"), "patterns apply to everyone");
        let alice = acl.client(Some("alice"), "a-1");
        assert!(alice.can_publish("alice/x"));
        assert!(!alice.can_read("public/news"));
        // No rules at all: nothing is allowed.
        let empty = self::acl("# nothing\n");
        assert!(empty.is_file());
        assert!(!empty.can_read(None, "c", "a"));
        assert!(!empty.can_publish(Some("u"), "c", "a"));
        assert!(!empty.can_subscribe(Some("u"), "c", "#"));
    }

    #[test]
    fn repeated_user_blocks_merge_and_spaces_in_filters() {
        let acl = acl(
            "user u\ntopic read a\nuser v\ntopic read b\nuser u\ntopic read c\nuser u\ntopic read with space/x\n  topic   write   d  \n",
        );
        let u = acl.client(Some("u"), "c");
        assert!(u.can_read("a") && u.can_read("c") && !u.can_read("b"));
        assert!(u.can_read("with space/x"), "the filter is the rest of the line after the access");
        assert!(u.can_publish("d"), "surrounding whitespace trimmed");
        // Usernames may contain spaces (the name is the rest of the line).
        let spaced = self::acl("user John Smith\ntopic read js/#\n");
        assert!(spaced.can_read(Some("John Smith"), "c", "js/x"));
        assert!(!spaced.can_read(Some("John"), "c", "js/x"));
    }

    #[test]
    fn malformed_lines_name_file_line_and_reason() {
        let cases = [
            (
                "topic read a\nbogus a/b\n",
                "acl:2: unknown keyword \"bogus\" (expected topic, user or pattern)",
            ),
            ("\n\ntopic rw a/b\n", "acl:3: unknown access \"rw\" (expected read, write, readwrite or deny)"),
            ("topic\n", "acl:1: `topic` without a topic filter"),
            ("topic read\n", "acl:1: `topic read` without a topic filter"),
            ("pattern deny   \n", "acl:1: `pattern deny` without a topic filter"),
            (
                "topic read a/#/b\n",
                "acl:1: invalid filter \"a/#/b\": wildcard '#' must occupy a whole level, and '#' must be last",
            ),
            ("topic read a/b+\n", "acl:1: invalid filter \"a/b+\""),
            ("pattern write x/%u#\n", "acl:1: invalid filter \"x/%u#\""),
            ("# ok\nuser\n", "acl:2: `user` without a name"),
            ("user   \n", "acl:1: `user` without a name"),
            ("Topic read a\n", "acl:1: unknown keyword \"Topic\""),
        ];
        for (text, expected) in cases {
            let err = parse_err(text);
            assert!(err.starts_with(expected), "{text:?}: got {err:?}, expected {expected:?}");
        }
    }

    #[test]
    fn warnings_for_likely_mistakes() {
        let acl = acl("topic read users/%u/x\npattern read fixed/topic\npattern read ok/%c\n");
        assert_eq!(
            acl.warnings(),
            [
                "acl:1: `topic` does not substitute %u or %c; did you mean `pattern`?",
                "acl:2: pattern without %u or %c applies to every client, anonymous ones included",
            ]
        );
        // A topic line with %u is literal.
        assert!(acl.can_read(None, "c", "users/%u/x"));
        assert!(!acl.can_read(None, "c", "users/bob/x"));
    }

    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!("fleetmq-acl-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("acl");
        std::fs::write(&path, OPERATOR_RENDER).expect("write");
        let loaded = Acl::load(&path).expect("load");
        assert_eq!(loaded.origin(), Some(path.display().to_string().as_str()));
        assert!(loaded.can_read(Some("grafana-dashboard"), "c", "telemetry/a"));
        std::fs::write(&path, "user a\ntopic read a\ntopic sometimes a\n").expect("write");
        let err = Acl::load(&path).expect_err("bad line");
        assert!(
            err.to_string().starts_with(&format!("{}:3: unknown access \"sometimes\"", path.display())),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn shareable_across_worker_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Acl>();
        assert_send_sync::<ClientAcl>();
        let c = acl("user u\ntopic read a/#\n").client(Some("u"), "c");
        let handle = std::thread::spawn(move || c.can_read("a/b"));
        assert!(handle.join().expect("thread"));
    }

    #[test]
    fn clients_without_patterns_share_the_compiled_rules() {
        let acl = acl("user u\ntopic read a/#\n");
        let one = acl.client(Some("u"), "c1");
        let two = acl.client(Some("u"), "c2");
        match (&one.rules, &two.rules) {
            (Some(a), Some(b)) => assert!(Arc::ptr_eq(a, b), "no per-client copy"),
            other => panic!("expected rules, got {other:?}"),
        }
        let with_pattern = self::acl("user u\ntopic read a/#\npattern read p/%c\n");
        let c = with_pattern.client(Some("u"), "c1");
        assert!(c.can_read("a/x") && c.can_read("p/c1") && !c.can_read("p/c2"));
    }

    #[test]
    fn many_rules_many_topics_agree_with_reference_matching() {
        // Cross-check the compiled matcher against fleetmq_config::topic::matches over a grid
        // of filters and topics, through the full can_read path.
        let filters = ["a/#", "a/+/c", "+/b/#", "x", "$SYS/+", "#", "a/b/c/d", "+"];
        let topics = ["a", "a/b", "a/b/c", "a/x/c", "z/b/q", "x", "x/y", "$SYS/up", "$SYS/a/b", "b"];
        for filter in filters {
            let c = acl(&format!("user u\ntopic read {filter}\n")).client(Some("u"), "c");
            for t in topics {
                assert_eq!(c.can_read(t), topic::matches(filter, t), "{filter} vs {t}");
            }
        }
    }
}
