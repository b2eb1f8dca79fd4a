//! Registry patterns and the kubelet's keyring matching (pkg/credentialprovider/keyring.go):
//! which configured secrets the kubelet would try for an image.

use std::collections::HashMap;

use thiserror::Error;

use crate::image::ImageName;

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
    #[error("port {0:?} is not a number")]
    InvalidPort(String),
    #[error("host label {label:?} is not a valid glob: {reason}")]
    InvalidGlob { label: String, reason: &'static str },
}

/// A registry key as the kubelet stores it: scheme and `/v1/`, `/v2/` prefixes removed.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    raw: String,
    key: String,
    host: HostMatch,
    path: String,
}

#[derive(Debug, Clone, PartialEq)]
struct HostMatch {
    labels: Vec<Glob>,
    port: String,
}

impl Pattern {
    /// Parses a pattern the way `BasicDockerKeyring.Add` normalizes a dockerconfigjson key.
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
        let schemeless = raw
            .strip_prefix("https://")
            .or_else(|| raw.strip_prefix("http://"))
            .unwrap_or(raw);
        let (host, path) = match schemeless.find('/') {
            Some(slash) => schemeless.split_at(slash),
            None => (schemeless, ""),
        };
        if host.is_empty() {
            return Err(PatternError::NoHost);
        }
        if host.contains('@') {
            return Err(PatternError::UserInfo);
        }
        let effective_path = if path.starts_with("/v1/") || path.starts_with("/v2/") {
            &path[3..]
        } else {
            path
        };
        let path = if effective_path == "/" {
            ""
        } else {
            effective_path
        };
        let (hostname, port) = split_host_port(host);
        if !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PatternError::InvalidPort(port.to_string()));
        }
        let labels = hostname
            .split('.')
            .map(|label| {
                Glob::parse(label).map_err(|reason| PatternError::InvalidGlob {
                    label: label.to_string(),
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            raw: raw.to_string(),
            key: format!("{host}{path}"),
            host: HostMatch {
                labels,
                port: port.to_string(),
            },
            path: path.to_string(),
        })
    }

    /// The pattern as configured.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The normalized key: `host[:port][/path]`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// `index.docker.io` keys only ever apply through the Docker Hub fallback.
    pub fn is_docker_hub_fallback(&self) -> bool {
        self.key == DEFAULT_REGISTRY_HOST
    }

    fn literal_host(&self) -> Option<String> {
        let mut labels = Vec::with_capacity(self.host.labels.len());
        for label in &self.host.labels {
            labels.push(label.as_literal()?);
        }
        Some(host_index_key(&labels.join("."), &self.host.port))
    }

    /// Where a globbed host is filed: its port, its label count and the literal labels that
    /// end it (`*.azurecr.io` → `azurecr.io`; empty when the last label has a wildcard).
    fn glob_slot(&self) -> GlobSlot {
        let literal_tail: Vec<String> = self
            .host
            .labels
            .iter()
            .rev()
            .map_while(Glob::as_literal)
            .collect();
        let suffix = literal_tail.into_iter().rev().collect::<Vec<_>>().join(".");
        GlobSlot {
            port: self.host.port.clone(),
            labels: self.host.labels.len(),
            suffix,
        }
    }

    /// `URLsMatch`: same port string, same label count, each label globs, path is a prefix.
    pub fn matches_directly(&self, image: &ImageName) -> bool {
        let (hostname, port) = split_host_port(image.domain());
        self.host.port == port
            && self.host_labels_match(hostname)
            && image_path_has_prefix(image, &self.path)
    }

    fn host_labels_match(&self, hostname: &str) -> bool {
        let count = hostname.bytes().filter(|b| *b == b'.').count() + 1;
        count == self.host.labels.len()
            && self
                .host
                .labels
                .iter()
                .zip(hostname.split('.'))
                .all(|(glob, label)| glob.matches(label))
    }

    /// True when the path matched only as a raw string prefix that cuts a path segment
    /// (`ghcr.io/acme` matching `ghcr.io/acme-labs/x`), which surprises people.
    pub fn matches_mid_segment(&self, image: &ImageName) -> bool {
        if self.path.is_empty() || self.path.ends_with('/') {
            return false;
        }
        let image_path = image.path();
        let pattern_path = &self.path[1..];
        image_path.len() > pattern_path.len()
            && image_path.starts_with(pattern_path)
            && image_path.as_bytes()[pattern_path.len()] != b'/'
    }
}

/// The image's URL path is `/` + its repository path.
fn image_path_has_prefix(image: &ImageName, pattern_path: &str) -> bool {
    match pattern_path.strip_prefix('/') {
        Some(rest) => image.path().starts_with(rest),
        None => pattern_path.is_empty(),
    }
}

/// Go's `net.SplitHostPort`, falling back to the whole host and no port when it fails,
/// as the kubelet's `SplitURL` does.
fn split_host_port(host: &str) -> (&str, &str) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((inner, after)) = rest.split_once(']')
            && let Some(port) = after.strip_prefix(':')
            && !inner.contains(['[', ']'])
        {
            return (inner, port);
        }
        return (host, "");
    }
    match host.rsplit_once(':') {
        Some((hostname, port)) if !hostname.contains(':') => (hostname, port),
        _ => (host, ""),
    }
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
            match pattern.literal_host() {
                Some(host) => keyring
                    .by_literal_host
                    .entry(host)
                    .or_default()
                    .push(position),
                None => {
                    let slot = pattern.glob_slot();
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
    /// use for `image`, mirroring `BasicDockerKeyring.Lookup`: literal hosts first, then
    /// globs by longest literal suffix, each in config order.
    pub fn for_each_match<'a>(
        &'a self,
        image: &ImageName,
        mut found: impl FnMut(usize, &'a Pattern, MatchKind),
    ) {
        let mut any_direct = false;
        let (hostname, port) = split_host_port(image.domain());
        let literal_hits = self
            .by_literal_host
            .get(&host_index_key(hostname, port))
            .map(Vec::as_slice)
            .unwrap_or_default();
        for &position in literal_hits {
            let (secret, pattern) = &self.patterns[position];
            if image_path_has_prefix(image, &pattern.path) {
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
        if !any_direct && is_default_registry_match(image) {
            for &position in &self.fallback {
                let (secret, pattern) = &self.patterns[position];
                found(*secret, pattern, MatchKind::DockerHubFallback);
            }
        }
    }
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
    fn rejects_patterns(#[case] raw: &str) {
        assert!(Pattern::parse(raw).is_err(), "{raw:?} should be rejected");
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
            "reg[0-9].example.com",
            "\\x.azurecr.io",
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
