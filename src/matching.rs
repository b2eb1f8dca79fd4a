//! Registry patterns and the kubelet's keyring matching (pkg/credentialprovider/keyring.go):
//! which configured secrets the kubelet would try for an image.

use std::collections::HashMap;

use thiserror::Error;

use crate::image::ImageName;
use crate::kubelet_url::{self, UrlError, split_host_port};

/// The key `kubectl create secret docker-registry` writes by default normalizes to this.
const DEFAULT_REGISTRY_HOST: &str = "index.docker.io";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PatternError {
    #[error("pattern is empty")]
    Empty,
    #[error("pattern contains whitespace or a control character")]
    Whitespace,
    #[error("pattern has no registry host")]
    NoHost,
    #[error(
        "pattern contains {0:?}, which the kubelet reads as the start of a URL query or fragment"
    )]
    QueryOrFragment(char),
    #[error("pattern contains '@': user information is not part of a registry key")]
    UserInfo,
    #[error("pattern contains '%': the kubelet decodes %-escapes; write the characters themselves")]
    PercentEscape,
    #[error(
        "pattern contains '\\': the kubelet's URL parsing refuses it in a host and ignores the entry"
    )]
    Backslash,
    #[error(
        "pattern contains {0:?}: character classes are not supported; the kubelet's URL parsing refuses a bracket in a host (except around an IPv6 address, as in [::1]:5000) and ignores the entry, so the secret would be used for nothing; list the hosts or use '*'"
    )]
    CharacterClass(char),
    #[error(
        "a bracketed IPv6 host needs a port (as in [::1]:5000): without one the kubelet globs the brackets as a character class"
    )]
    IpLiteralWithoutPort,
    #[error(
        "pattern has '*' in its path: '*' globs host labels only; in a path it is a literal character that no image name contains"
    )]
    PathWildcard,
    #[error("port {0:?} is not a number")]
    InvalidPort(String),
    #[error("the kubelet cannot read this key as a URL and ignores it: {0}")]
    IgnoredByKubelet(UrlError),
    #[error("the kubelet reads this key but it can match no image name")]
    MatchesNothing,
}

/// A registry key as the kubelet's keyring stores it (`BasicDockerKeyring.Add`) and matches
/// it (`URLsMatch`, which parses the stored key again).
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    raw: String,
    /// The stored key: host and decoded path, scheme and `/v1/`, `/v2/` prefixes removed.
    /// Bytes, as Go has them: a decoded escape need not be UTF-8.
    key: Vec<u8>,
    key_shown: String,
    /// `raw` with any user information (`user:password@`, which the kubelet drops from a
    /// key) replaced: what reports may show.
    raw_shown: String,
    /// None when the key can match no image name: parsing it again fails, it is not UTF-8,
    /// or a host label is a malformed glob (the kubelet's `filepath.Match` fails on it).
    matcher: Option<KeyMatcher>,
}

#[derive(Debug, Clone, PartialEq)]
struct KeyMatcher {
    labels: Vec<Glob>,
    port: String,
    /// The path that must prefix the image's, `/`-led, or empty.
    path: String,
}

impl Pattern {
    /// A pattern written in the config: the kubelet's reading of the same string as an `auths`
    /// key, refused where that reading would surprise (a query, user information, escapes, a
    /// character class the kubelet ignores, a wildcard in the path) or where the kubelet
    /// ignores the key or can match nothing with it.
    pub fn parse(raw: &str) -> Result<Self, PatternError> {
        if raw.is_empty() {
            return Err(PatternError::Empty);
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(PatternError::Whitespace);
        }
        if let Some(c) = raw.chars().find(|c| matches!(c, '?' | '#')) {
            return Err(PatternError::QueryOrFragment(c));
        }
        if raw.contains('%') {
            return Err(PatternError::PercentEscape);
        }
        if raw.contains('\\') {
            return Err(PatternError::Backslash);
        }
        let schemeless = raw
            .strip_prefix("https://")
            .or_else(|| raw.strip_prefix("http://"))
            .unwrap_or(raw);
        let (host, path) = schemeless.split_at(schemeless.find('/').unwrap_or(schemeless.len()));
        if host.is_empty() {
            return Err(PatternError::NoHost);
        }
        if host.contains('@') {
            return Err(PatternError::UserInfo);
        }
        check_brackets(host, path)?;
        if path.contains('*') {
            return Err(PatternError::PathWildcard);
        }
        let pattern = Self::from_auths_key(raw).map_err(|e| match e {
            UrlError::InvalidPort(port) => PatternError::InvalidPort(port),
            other => PatternError::IgnoredByKubelet(other),
        })?;
        if pattern.matcher.is_none() {
            return Err(PatternError::MatchesNothing);
        }
        Ok(pattern)
    }

    /// An `auths` key of a dockerconfigjson Secret, read exactly as the kubelet reads it: an
    /// error is a key the kubelet ignores. Keys that parse but can match nothing are kept.
    pub fn from_auths_key(raw: &str) -> Result<Self, UrlError> {
        let has_scheme = raw.starts_with("https://") || raw.starts_with("http://");
        let url = if has_scheme {
            kubelet_url::parse(raw.as_bytes())?
        } else {
            kubelet_url::parse(format!("https://{raw}").as_bytes())?
        };
        let raw_shown = if url.had_user_info {
            let start = if has_scheme {
                raw.find("://").map_or(0, |i| i + 3)
            } else {
                0
            };
            let authority_end = raw[start..]
                .find(['/', '?', '#'])
                .map_or(raw.len(), |i| start + i);
            let at = raw[start..authority_end]
                .rfind('@')
                .map_or(start, |i| start + i);
            format!("{}<redacted>{}", &raw[..start], &raw[at..])
        } else {
            raw.to_string()
        };
        let path = url.path.as_slice();
        let effective_path = if path.starts_with(b"/v2/") || path.starts_with(b"/v1/") {
            &path[3..]
        } else {
            path
        };
        let mut key = url.host;
        if !effective_path.is_empty() && effective_path != b"/" {
            key.extend_from_slice(effective_path);
        }
        Ok(Self {
            raw: raw.to_string(),
            raw_shown,
            key_shown: String::from_utf8_lossy(&key).into_owned(),
            matcher: KeyMatcher::from_key(&key),
            key,
        })
    }

    /// The pattern as configured.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The pattern as it may be shown: an `auths` key's user information redacted.
    pub fn shown(&self) -> &str {
        &self.raw_shown
    }

    /// The normalized key: `host[:port][/path]` (a byte that is not UTF-8 shown as U+FFFD).
    pub fn key(&self) -> &str {
        &self.key_shown
    }

    /// Whether some image name can match this key directly.
    pub fn can_match(&self) -> bool {
        self.matcher.is_some()
    }

    /// `index.docker.io` keys only ever apply through the Docker Hub fallback.
    pub fn is_docker_hub_fallback(&self) -> bool {
        self.key == DEFAULT_REGISTRY_HOST.as_bytes()
    }

    fn literal_host(&self) -> Option<String> {
        let matcher = self.matcher.as_ref()?;
        let mut labels = Vec::with_capacity(matcher.labels.len());
        for label in &matcher.labels {
            labels.push(label.as_literal()?);
        }
        Some(host_index_key(&labels.join("."), &matcher.port))
    }

    /// Where a globbed host is filed: its port, its label count and the literal labels that
    /// end it (`*.azurecr.io` → `azurecr.io`; empty when the last label has a wildcard).
    fn glob_slot(&self) -> Option<GlobSlot> {
        let matcher = self.matcher.as_ref()?;
        let literal_tail: Vec<String> = matcher
            .labels
            .iter()
            .rev()
            .map_while(Glob::as_literal)
            .collect();
        let suffix = literal_tail.into_iter().rev().collect::<Vec<_>>().join(".");
        Some(GlobSlot {
            port: matcher.port.clone(),
            labels: matcher.labels.len(),
            suffix,
        })
    }

    /// `URLsMatch`: same port string, same label count, each label globs, path is a prefix.
    pub fn matches_directly(&self, image: &ImageName) -> bool {
        let Some(matcher) = &self.matcher else {
            return false;
        };
        let (hostname, port) = split_host_port(image.domain());
        image.kubelet_url_parses()
            && matcher.port == port
            && matcher.host_labels_match(hostname)
            && image_url_path(image).starts_with(&matcher.path)
    }

    /// True when the path matched only as a raw string prefix that cuts a path segment
    /// (`ghcr.io/acme` matching `ghcr.io/acme-labs/x`), which surprises people.
    pub fn matches_mid_segment(&self, image: &ImageName) -> bool {
        let Some(matcher) = &self.matcher else {
            return false;
        };
        if matcher.path.is_empty() || matcher.path.ends_with('/') {
            return false;
        }
        let image_path = image_url_path(image);
        image_path.len() > matcher.path.len()
            && image_path.starts_with(&matcher.path)
            && image_path.as_bytes()[matcher.path.len()] != b'/'
    }
}

/// A config pattern may bracket only an IPv6 address, and only with a port: anything else
/// the kubelet either ignores or reads as a glob character class.
fn check_brackets(host: &str, path: &str) -> Result<(), PatternError> {
    let first_bracket = |s: &str| s.chars().find(|c| matches!(c, '[' | ']'));
    if let Some(c) = first_bracket(path) {
        return Err(PatternError::CharacterClass(c));
    }
    let Some(c) = first_bracket(host) else {
        return Ok(());
    };
    let Some(bracketed) = host.strip_prefix('[') else {
        return Err(PatternError::CharacterClass(c));
    };
    match bracketed.split_once(']') {
        Some((address, after)) if !address.contains(['[', ']']) && !after.contains(['[', ']']) => {
            if after.is_empty() {
                Err(PatternError::IpLiteralWithoutPort)
            } else {
                Ok(())
            }
        }
        _ => Err(PatternError::CharacterClass('[')),
    }
}

impl KeyMatcher {
    /// `URLsMatch` parses the stored key again; what that leaves is what gets compared.
    fn from_key(key: &[u8]) -> Option<Self> {
        let mut url = b"https://".to_vec();
        url.extend_from_slice(key);
        let url = kubelet_url::parse(&url).ok()?;
        // Image names are ASCII: a key that is not UTF-8 matches none.
        let host = String::from_utf8(url.host).ok()?;
        let path = String::from_utf8(url.path).ok()?;
        let (hostname, port) = split_host_port(&host);
        let labels = hostname
            .split('.')
            .map(Glob::parse)
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        Some(Self {
            labels,
            port: port.to_string(),
            path,
        })
    }

    fn host_labels_match(&self, hostname: &str) -> bool {
        let count = hostname.bytes().filter(|b| *b == b'.').count() + 1;
        count == self.labels.len()
            && self
                .labels
                .iter()
                .zip(hostname.split('.'))
                .all(|(glob, label)| glob.matches(label))
    }
}

/// The image's URL path as the keyring parses the name: `/` and the repository path.
fn image_url_path(image: &ImageName) -> &str {
    &image.as_str()[image.domain().len()..]
}

fn host_index_key(hostname: &str, port: &str) -> String {
    format!("{port}|{hostname}")
}

/// `isDefaultRegistryMatch`: an image that the kubelet counts as Docker Hub for the fallback.
fn is_default_registry_match(image: &ImageName) -> bool {
    let first = image.domain();
    first == "docker.io" || first == DEFAULT_REGISTRY_HOST || !first.contains(['.', ':'])
}

/// One label of a host pattern, with Go's `filepath.Match` syntax: `*`, `?`, `[...]`, `\`.
#[derive(Debug, Clone, PartialEq)]
struct Glob {
    tokens: Vec<Token>,
    /// Set when the label has no wildcard: compared as a plain string.
    literal: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Literal(char),
    AnyChar,
    AnyRun,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Glob {
    fn parse(label: &str) -> Result<Self, &'static str> {
        let mut tokens = Vec::new();
        let mut chars = label.chars().peekable();
        while let Some(c) = chars.next() {
            let token = match c {
                '*' => Token::AnyRun,
                '?' => Token::AnyChar,
                '\\' => Token::Literal(chars.next().ok_or("trailing backslash")?),
                '[' => {
                    let negated = chars.next_if_eq(&'^').is_some();
                    let mut ranges = Vec::new();
                    loop {
                        if !ranges.is_empty() && chars.next_if_eq(&']').is_some() {
                            break;
                        }
                        let lo = class_char(&mut chars)?;
                        let hi = if chars.next_if_eq(&'-').is_some() {
                            class_char(&mut chars)?
                        } else {
                            lo
                        };
                        ranges.push((lo, hi));
                    }
                    Token::Class { negated, ranges }
                }
                c => Token::Literal(c),
            };
            tokens.push(token);
        }
        let literal = tokens
            .iter()
            .map(|t| match t {
                Token::Literal(c) => Some(*c),
                _ => None,
            })
            .collect();
        Ok(Self { tokens, literal })
    }

    fn as_literal(&self) -> Option<String> {
        self.literal.clone()
    }

    /// Image hosts are ASCII (the reference grammar), so matching walks bytes.
    fn matches(&self, text: &str) -> bool {
        match &self.literal {
            Some(literal) => literal == text,
            None => glob_match(&self.tokens, text.as_bytes()),
        }
    }
}

fn class_char(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<char, &'static str> {
    let c = match chars.next() {
        None => return Err("unterminated character class"),
        Some('-') | Some(']') => return Err("character class has an empty range"),
        Some('\\') => chars.next().ok_or("trailing backslash")?,
        Some(c) => c,
    };
    if chars.peek().is_none() {
        return Err("unterminated character class");
    }
    Ok(c)
}

/// Iterative wildcard matching with single-star backtracking: linear for labels.
fn glob_match(tokens: &[Token], text: &[u8]) -> bool {
    let (mut t, mut s) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while s < text.len() {
        match tokens.get(t) {
            Some(Token::AnyRun) => {
                backtrack = Some((t, s));
                t += 1;
                continue;
            }
            Some(token) if token_matches(token, char::from(text[s])) => {
                t += 1;
                s += 1;
                continue;
            }
            _ => {}
        }
        match backtrack {
            Some((star, from)) => {
                t = star + 1;
                s = from + 1;
                backtrack = Some((star, from + 1));
            }
            None => return false,
        }
    }
    tokens[t..]
        .iter()
        .all(|token| matches!(token, Token::AnyRun))
}

fn token_matches(token: &Token, c: char) -> bool {
    match token {
        Token::Literal(l) => *l == c,
        Token::AnyChar => true,
        Token::AnyRun => false,
        Token::Class { negated, ranges } => {
            ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negated
        }
    }
}

/// How a pattern came to apply to an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    Direct,
    /// Only through the Docker Hub fallback: no configured pattern matched directly.
    DockerHubFallback,
}

/// All configured patterns, indexed for the admission hot path: literal hosts by host and
/// port; globbed hosts by port, label count and literal suffix, since `URLsMatch` needs all
/// three to agree. An image then tries only the globs that can match its host.
#[derive(Debug, Default, Clone)]
pub struct Keyring {
    patterns: Vec<(usize, Pattern)>,
    by_literal_host: HashMap<String, Vec<usize>>,
    /// port → label count → literal suffix → positions.
    globbed: HashMap<String, HashMap<usize, HashMap<String, Vec<usize>>>>,
    fallback: Vec<usize>,
}

struct GlobSlot {
    port: String,
    labels: usize,
    suffix: String,
}

impl Keyring {
    /// `entries` yields (secret index, pattern).
    pub fn new(entries: impl IntoIterator<Item = (usize, Pattern)>) -> Self {
        let mut keyring = Self::default();
        for (secret, pattern) in entries {
            let position = keyring.patterns.len();
            if pattern.is_docker_hub_fallback() {
                keyring.fallback.push(position);
            }
            if let Some(host) = pattern.literal_host() {
                keyring
                    .by_literal_host
                    .entry(host)
                    .or_default()
                    .push(position);
            } else if let Some(slot) = pattern.glob_slot() {
                keyring
                    .globbed
                    .entry(slot.port)
                    .or_default()
                    .entry(slot.labels)
                    .or_default()
                    .entry(slot.suffix)
                    .or_default()
                    .push(position);
            }
            keyring.patterns.push((secret, pattern));
        }
        keyring
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Calls `found` with (secret index, pattern, kind) for every pattern the kubelet would
    /// use for `image`, as `BasicDockerKeyring.Lookup` decides: literal hosts first, then
    /// globs by longest literal suffix, each in config order ([`Keyring::lookup`] gives the
    /// kubelet's order).
    pub fn for_each_match<'a>(
        &'a self,
        image: &ImageName,
        mut found: impl FnMut(usize, &'a Pattern, MatchKind),
    ) {
        let mut any_direct = false;
        // A name the keyring cannot parse as a URL matches no key directly.
        if image.kubelet_url_parses() {
            let (hostname, port) = split_host_port(image.domain());
            let image_path = image_url_path(image);
            let literal_hits = self
                .by_literal_host
                .get(&host_index_key(hostname, port))
                .map(Vec::as_slice)
                .unwrap_or_default();
            for &position in literal_hits {
                let (secret, pattern) = &self.patterns[position];
                if pattern
                    .matcher
                    .as_ref()
                    .is_some_and(|m| image_path.starts_with(&m.path))
                {
                    any_direct = true;
                    found(*secret, pattern, MatchKind::Direct);
                }
            }
            let globbed = self
                .globbed
                .get(port)
                .and_then(|by_count| by_count.get(&(hostname.split('.').count())));
            if let Some(by_suffix) = globbed {
                // Every suffix of the host at a label boundary, longest first, then the empty one.
                let suffixes = hostname
                    .match_indices('.')
                    .map(|(dot, _)| &hostname[dot + 1..])
                    .chain(std::iter::once(""));
                for suffix in suffixes {
                    for &position in by_suffix.get(suffix).map(Vec::as_slice).unwrap_or_default() {
                        let (secret, pattern) = &self.patterns[position];
                        if pattern.matches_directly(image) {
                            any_direct = true;
                            found(*secret, pattern, MatchKind::Direct);
                        }
                    }
                }
            }
        }
        if !any_direct && is_default_registry_match(image) {
            for &position in &self.fallback {
                let (secret, pattern) = &self.patterns[position];
                found(*secret, pattern, MatchKind::DockerHubFallback);
            }
        }
    }

    /// Every match in the order the kubelet tries the credentials: its index is the keys
    /// sorted in reverse (byte order), and equal keys keep the order of the pod's secrets,
    /// which is config order here.
    pub fn lookup<'a>(&'a self, image: &ImageName) -> Vec<Match<'a>> {
        let mut matches = Vec::new();
        self.for_each_match(image, |secret, pattern, kind| {
            matches.push(Match {
                secret,
                pattern,
                kind,
            })
        });
        // Stable: equal keys stay in config order.
        matches.sort_by(|a, b| b.pattern.key.cmp(&a.pattern.key));
        matches
    }
}

/// One credential the kubelet would try for an image.
#[derive(Debug, Clone, Copy)]
pub struct Match<'a> {
    /// Index of the configured secret.
    pub secret: usize,
    pub pattern: &'a Pattern,
    pub kind: MatchKind,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn image(s: &str) -> ImageName {
        ImageName::parse(s).expect("test image parses")
    }

    #[rstest]
    #[case::host("registry.example.com", "registry.example.com")]
    #[case::scheme_and_v1("https://index.docker.io/v1/", "index.docker.io")]
    #[case::http_and_v2_path(
        "http://registry.example.com:5000/v2/team",
        "registry.example.com:5000/team"
    )]
    #[case::trailing_slash_kept("ghcr.io/acme/", "ghcr.io/acme/")]
    #[case::root_path("ghcr.io/", "ghcr.io")]
    #[case::glob("*.azurecr.io", "*.azurecr.io")]
    fn normalizes_keys(#[case] raw: &str, #[case] key: &str) {
        assert_eq!(Pattern::parse(raw).unwrap().key(), key);
    }

    #[rstest]
    #[case::empty("")]
    #[case::space("ghcr .io")]
    #[case::query("registry?.io")]
    #[case::fragment("ghcr.io#x")]
    #[case::no_host("https:///path")]
    #[case::user_info("user@ghcr.io")]
    #[case::bad_port("ghcr.io:http")]
    #[case::open_class("reg[istry.io")]
    #[case::empty_class("reg[]x.io")]
    #[case::trailing_backslash("registry\\")]
    #[case::class("host[1-3].example.com")]
    #[case::leading_class("[a-z]*/acme")]
    #[case::ipv6_without_port("[::1]")]
    #[case::not_ipv6("[ab]:5000")]
    #[case::two_colons("a:1:2")]
    #[case::escape("ghcr.io/a%2Fb")]
    #[case::path_wildcard("ghcr.io/acme/*")]
    #[case::class_in_path("ghcr.io/[a]")]
    fn rejects_patterns(#[case] raw: &str) {
        assert!(Pattern::parse(raw).is_err(), "{raw:?} should be rejected");
    }

    #[test]
    fn character_classes_are_refused_with_the_reason() {
        let err = Pattern::parse("host[1-3].example.com")
            .unwrap_err()
            .to_string();
        assert!(err.contains("character classes are not supported"), "{err}");
        assert!(err.contains("used for nothing"), "{err}");
    }

    #[rstest]
    #[case::query_ends_the_key("ghcr.io?x", "ghcr.io")]
    #[case::user_info_dropped("robot:s3cret@ghcr.io/acme", "ghcr.io/acme")]
    #[case::escape_decoded("ghcr.io/a%2Fb", "ghcr.io/a/b")]
    #[case::v2_path("https://ghcr.io/v2/acme", "ghcr.io/acme")]
    fn auths_keys_read_as_the_kubelet_reads_them(#[case] raw: &str, #[case] key: &str) {
        let pattern = Pattern::from_auths_key(raw).unwrap();
        assert_eq!(pattern.key(), key);
        assert!(pattern.can_match());
    }

    #[test]
    fn an_escaped_query_in_a_stored_key_cuts_its_path_when_matched() {
        // Stored as ghcr.io/a?b; parsed again for matching, the path is /a.
        let pattern = Pattern::from_auths_key("ghcr.io/a%3Fb").unwrap();
        assert_eq!(pattern.key(), "ghcr.io/a?b");
        assert!(pattern.matches_directly(&image("ghcr.io/acme/x")));
    }

    #[test]
    fn user_information_in_a_key_is_never_shown() {
        for (raw, shown) in [
            (
                "https://robot:s3cret@ghcr.io/a@b",
                "https://<redacted>@ghcr.io/a@b",
            ),
            ("robot:s3cr@et@ghcr.io", "<redacted>@ghcr.io"),
            ("ghcr.io/acme", "ghcr.io/acme"),
        ] {
            let pattern = Pattern::from_auths_key(raw).unwrap();
            assert_eq!(pattern.shown(), shown, "{raw:?}");
            assert!(!pattern.key().contains("s3"), "{raw:?}");
        }
    }

    #[test]
    fn auths_keys_the_kubelet_ignores_are_errors() {
        for raw in [
            "[a-z]*/acme",
            "host[1-3].example.com",
            "a:1:2",
            "ghcr.io/%zz",
        ] {
            assert!(Pattern::from_auths_key(raw).is_err(), "{raw:?}");
        }
    }

    #[rstest]
    #[case("a*", "abc", true)]
    #[case("*c", "abc", true)]
    #[case("a*c*e", "abcde", true)]
    #[case("a*c*e", "abcdf", false)]
    #[case("?b?", "abc", true)]
    #[case("?b?", "ab", false)]
    #[case("[a-c]x", "bx", true)]
    #[case("[^a-c]x", "bx", false)]
    #[case("[^a-c]x", "dx", true)]
    #[case("a\\*", "a*", true)]
    #[case("a\\*", "ab", false)]
    #[case("*", "", true)]
    fn globs_like_go_filepath_match(
        #[case] glob: &str,
        #[case] text: &str,
        #[case] expected: bool,
    ) {
        assert_eq!(Glob::parse(glob).unwrap().matches(text), expected);
    }

    #[test]
    fn ports_compare_as_strings() {
        let keyring = Keyring::new([(0, Pattern::parse("registry.example.com:443").unwrap())]);
        let mut hits = 0;
        keyring.for_each_match(&image("registry.example.com/a"), |_, _, _| hits += 1);
        assert_eq!(hits, 0);
    }

    #[test]
    fn fallback_applies_only_without_a_direct_match() {
        let keyring = Keyring::new([
            (0, Pattern::parse("https://index.docker.io/v1/").unwrap()),
            (1, Pattern::parse("docker.io/corp").unwrap()),
        ]);
        let mut hits = Vec::new();
        keyring.for_each_match(&image("corp/app"), |s, _, k| hits.push((s, k)));
        assert_eq!(hits, vec![(1, MatchKind::Direct)]);
        hits.clear();
        keyring.for_each_match(&image("other/app"), |s, _, k| hits.push((s, k)));
        assert_eq!(hits, vec![(0, MatchKind::DockerHubFallback)]);
        hits.clear();
        keyring.for_each_match(&image("ghcr.io/other/app"), |s, _, k| hits.push((s, k)));
        assert!(hits.is_empty());
    }

    #[test]
    fn literal_and_glob_patterns_agree_with_direct_matching() {
        let raw = [
            "ghcr.io/acme",
            "ghcr.io",
            "*.azurecr.io",
            "registry.example.com:5000",
            "[::1]:5000",
            "*.*.io",
            "a*.azurecr.io",
            "x.*.io/a",
            "*",
            "*.example.com:5000",
            "reg*.example.com",
            "x.azurecr.io",
        ];
        let keyring = Keyring::new(
            raw.iter()
                .enumerate()
                .map(|(i, r)| (i, Pattern::parse(r).unwrap())),
        );
        for img in [
            "ghcr.io/acme/app",
            "ghcr.io/acme-labs/x",
            "x.azurecr.io/a",
            "registry.example.com:5000/a",
            "[::1]:5000/x",
            "nginx",
            "ab.azurecr.io/z",
            "x.b.io/a/b",
            "localhost/app",
            "registry.example.com:5000/team/app",
            "reg7.example.com/app",
            "deep.x.azurecr.io/app",
        ] {
            let image = image(img);
            let mut indexed = Vec::new();
            keyring.for_each_match(&image, |s, _, _| indexed.push(s));
            indexed.sort();
            let linear: Vec<usize> = raw
                .iter()
                .enumerate()
                .filter(|(_, r)| Pattern::parse(r).unwrap().matches_directly(&image))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(indexed, linear, "{img}");
        }
    }

    #[test]
    fn reports_mid_segment_prefix_matches() {
        let acme = Pattern::parse("ghcr.io/acme").unwrap();
        assert!(acme.matches_mid_segment(&image("ghcr.io/acme-labs/x")));
        assert!(!acme.matches_mid_segment(&image("ghcr.io/acme/x")));
        assert!(!acme.matches_mid_segment(&image("ghcr.io/acme")));
        assert!(
            !Pattern::parse("ghcr.io/acme/")
                .unwrap()
                .matches_mid_segment(&image("ghcr.io/acme/x"))
        );
    }
}
