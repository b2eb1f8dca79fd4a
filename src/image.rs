//! Image reference normalization, following distribution/reference's `ParseNormalizedNamed`
//! and `Name()`: the string the kubelet looks up in its keyring.

use std::fmt;

use thiserror::Error;

use crate::kubelet_url;

const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
/// distribution/reference's RepositoryNameTotalLengthMax: the repository path, not the domain.
const NAME_TOTAL_LENGTH_MAX: usize = 255;
const TAG_LENGTH_MAX: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ImageError {
    #[error("image reference is empty")]
    Empty,
    #[error("a 64-character hexadecimal id is not a repository name")]
    HexIdentifier,
    #[error("repository name {0:?} must be lowercase")]
    UppercaseRepository(String),
    #[error("registry host {0:?} is not a valid domain, IPv4 or bracketed IPv6 address")]
    InvalidDomain(String),
    #[error(
        "repository path {0:?} is not valid (lowercase letters, digits and . _ __ - separators)"
    )]
    InvalidPath(String),
    #[error("tag {0:?} is not valid (1 to 128 of [A-Za-z0-9_.-], not starting with . or -)")]
    InvalidTag(String),
    #[error(
        "digest {0:?} is not valid (sha256, sha384 or sha512 with lowercase hex of the right length)"
    )]
    InvalidDigest(String),
    #[error("repository path is longer than {NAME_TOTAL_LENGTH_MAX} characters")]
    NameTooLong,
}

/// A normalized image name: `domain/path`, without tag or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    domain_len: usize,
    name: String,
    /// Whether Go's `url.Parse` accepts the name, as the kubelet's keyring reads it: a
    /// bracketed host that is not an IPv6 address (`[AB]/x`) matches no registry key.
    kubelet_url_parses: bool,
}

impl ImageName {
    /// Parses an image reference as the kubelet does and keeps its name.
    pub fn parse(reference: &str) -> Result<Self, ImageError> {
        if reference.is_empty() {
            return Err(ImageError::Empty);
        }
        if reference.len() == 64 && reference.bytes().all(is_lower_hex) {
            return Err(ImageError::HexIdentifier);
        }
        let (domain, remainder) = split_docker_domain(reference);
        let remainder = remainder.as_str();
        // The repository part ends at the first ':' (tag or digest), as in ParseNormalizedNamed.
        let remote = remainder.split(':').next().unwrap_or(remainder);
        if remote.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ImageError::UppercaseRepository(remote.to_string()));
        }

        let (name_and_tag, digest) = match remainder.split_once('@') {
            Some((left, digest)) => (left, Some(digest)),
            None => (remainder, None),
        };
        let (path, tag) = match name_and_tag.split_once(':') {
            Some((path, tag)) => (path, Some(tag)),
            None => (name_and_tag, None),
        };
        // The reference grammar makes the domain optional: a first component that is no
        // domain (`my_registry.example`) but a valid path component makes the whole name a
        // path, with no domain. The kubelet still reads that component as the registry host.
        let domain_less = !is_valid_domain(&domain) && is_valid_path_component(&domain);
        if !is_valid_domain(&domain) && !domain_less {
            return Err(ImageError::InvalidDomain(domain));
        }
        if !is_valid_path(path) {
            return Err(ImageError::InvalidPath(path.to_string()));
        }
        if let Some(tag) = tag
            && !is_valid_tag(tag)
        {
            return Err(ImageError::InvalidTag(tag.to_string()));
        }
        if let Some(digest) = digest
            && !is_valid_digest(digest)
        {
            return Err(ImageError::InvalidDigest(digest.to_string()));
        }
        let name = format!("{domain}/{path}");
        // reference.Parse limits the repository path; a domain-less name is all path.
        let repository_path = if domain_less { &name } else { path };
        if repository_path.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(ImageError::NameTooLong);
        }
        let kubelet_url_parses = match domain.strip_prefix('[') {
            Some(bracketed) => {
                let address = bracketed.split(']').next().unwrap_or_default();
                kubelet_url::is_ipv6_address(address.as_bytes())
            }
            None => true,
        };
        Ok(Self {
            domain_len: domain.len(),
            name,
            kubelet_url_parses,
        })
    }

    /// `domain/path`, what `reference.Named.Name()` returns.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The registry host, with its port if the reference named one: the name's first
    /// component, which is what the kubelet's keyring matches keys against.
    pub fn domain(&self) -> &str {
        &self.name[..self.domain_len]
    }

    /// The repository path, without leading `/`.
    pub fn path(&self) -> &str {
        &self.name[self.domain_len + 1..]
    }

    /// False when the kubelet's keyring cannot parse the name as a URL: then no registry
    /// key matches it directly (the Docker Hub fallback still may).
    pub fn kubelet_url_parses(&self) -> bool {
        self.kubelet_url_parses
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// distribution/reference's splitDockerDomain: decides whether the first segment is a registry.
fn split_docker_domain(reference: &str) -> (String, String) {
    let (mut domain, mut remainder) = match reference.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DEFAULT_DOMAIN.to_string(), reference.to_string()),
    };
    if domain == LEGACY_DEFAULT_DOMAIN {
        domain = DEFAULT_DOMAIN.to_string();
    }
    if domain == DEFAULT_DOMAIN && !remainder.contains('/') {
        remainder.insert_str(0, OFFICIAL_REPO_PREFIX);
    }
    (domain, remainder)
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// host [":" port], host a DNS name / IPv4 (dot-separated components) or `[IPv6]`.
fn is_valid_domain(domain: &str) -> bool {
    let (host_ok, after_host) = match domain.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, after)) => (
                !v6.is_empty() && v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':'),
                after,
            ),
            None => return false,
        },
        None => {
            let end = domain.find(':').unwrap_or(domain.len());
            let host = &domain[..end];
            (
                !host.is_empty() && host.split('.').all(is_valid_domain_component),
                &domain[end..],
            )
        }
    };
    let port_ok = match after_host.strip_prefix(':') {
        Some(port) => !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()),
        None => after_host.is_empty(),
    };
    host_ok && port_ok
}

fn is_valid_domain_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        }
        _ => false,
    }
}

/// path-component ("/" path-component)*, each `[a-z0-9]+ (separator [a-z0-9]+)*`
/// with separator `.`, `_`, `__` or one or more `-`.
fn is_valid_path(path: &str) -> bool {
    !path.is_empty() && path.split('/').all(is_valid_path_component)
}

fn is_valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    let mut expect_alnum = true;
    while i < bytes.len() {
        if alnum(&bytes[i]) {
            while i < bytes.len() && alnum(&bytes[i]) {
                i += 1;
            }
            expect_alnum = false;
            continue;
        }
        if expect_alnum {
            return false;
        }
        let sep_len = match bytes[i] {
            b'.' => 1,
            b'_' if bytes.get(i + 1) == Some(&b'_') => 2,
            b'_' => 1,
            b'-' => bytes[i..].iter().take_while(|b| **b == b'-').count(),
            _ => return false,
        };
        i += sep_len;
        expect_alnum = true;
    }
    !expect_alnum
}

fn is_valid_tag(tag: &str) -> bool {
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    let bytes = tag.as_bytes();
    match bytes.split_first() {
        Some((first, rest)) => {
            word(first)
                && bytes.len() <= TAG_LENGTH_MAX
                && rest.iter().all(|b| word(b) || *b == b'.' || *b == b'-')
        }
        None => false,
    }
}

/// go-digest's Parse + Validate for the algorithms the kubelet links in.
fn is_valid_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let expected_len = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == expected_len && hex.bytes().all(is_lower_hex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const HEX: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[rstest]
    #[case::familiar_name("nginx", "docker.io/library/nginx")]
    #[case::tag_dropped("nginx:1.25", "docker.io/library/nginx")]
    #[case::user_repo("myorg/app:v1", "docker.io/myorg/app")]
    #[case::legacy_index("index.docker.io/library/nginx", "docker.io/library/nginx")]
    #[case::docker_io_single("docker.io/nginx", "docker.io/library/nginx")]
    #[case::localhost_port_alone_is_a_tag("localhost:5000", "docker.io/library/localhost")]
    #[case::localhost_domain("localhost/foo", "localhost/foo")]
    #[case::port(
        "registry.example.com:5000/team/app:1.0",
        "registry.example.com:5000/team/app"
    )]
    #[case::ipv6("[::1]:5000/x", "[::1]:5000/x")]
    #[case::ipv6_without_port("[fe80::1]/x", "[fe80::1]/x")]
    #[case::uppercase_domain("MyRegistry/app", "MyRegistry/app")]
    #[case::separators("ghcr.io/a__b/c-d--e/f.g_h", "ghcr.io/a__b/c-d--e/f.g_h")]
    #[case::domain_less("my_registry.example/a/app", "my_registry.example/a/app")]
    #[case::bracketed_hex("[AB]/x", "[AB]/x")]
    fn normalizes(#[case] image: &str, #[case] expected: &str) {
        let name = ImageName::parse(image).expect("parses");
        assert_eq!(name.as_str(), expected);
        assert_eq!(format!("{}/{}", name.domain(), name.path()), expected);
    }

    #[test]
    fn digest_and_tag_are_dropped() {
        let image = format!("nginx:1.25@sha256:{HEX}");
        assert_eq!(
            ImageName::parse(&image).unwrap().as_str(),
            "docker.io/library/nginx"
        );
    }

    #[rstest]
    #[case::uppercase_repository("Nginx")]
    #[case::scheme("https://registry.example.com/app")]
    #[case::uppercase_path("ghcr.io/MyOrg/app")]
    #[case::empty_tag("registry.example.com/app:")]
    #[case::hex_id(HEX)]
    #[case::empty("")]
    #[case::trailing_slash("ghcr.io/app/")]
    #[case::double_slash("ghcr.io//app")]
    #[case::leading_separator("ghcr.io/-app")]
    #[case::triple_underscore("ghcr.io/a___b")]
    #[case::bad_port("registry.example.com:x/app")]
    #[case::unknown_digest_algorithm("nginx@md5:abcdef")]
    #[case::short_digest("nginx@sha256:abc")]
    #[case::uppercase_digest(
        "nginx@sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824"
    )]
    #[case::tag_starting_with_dot("nginx:.x")]
    #[case::space("ngi nx")]
    fn rejects(#[case] image: &str) {
        assert!(
            ImageName::parse(image).is_err(),
            "{image:?} should not parse"
        );
    }

    #[test]
    fn limits_the_repository_path_to_255() {
        let image = format!("ghcr.io/{}", "a".repeat(256));
        assert_eq!(ImageName::parse(&image), Err(ImageError::NameTooLong));
        let image = format!("ghcr.io/{}", "a".repeat(255));
        assert_eq!(ImageName::parse(&image).unwrap().as_str(), image);
        // A domain-less name is all path.
        let image = format!("my_registry.example/{}", "a".repeat(236));
        assert_eq!(ImageName::parse(&image), Err(ImageError::NameTooLong));
    }

    #[test]
    fn a_domain_less_name_is_matched_on_its_first_component() {
        let name = ImageName::parse("my_registry.example/a/app:1").unwrap();
        assert_eq!(name.domain(), "my_registry.example");
        assert_eq!(name.path(), "a/app");
        assert!(ImageName::parse("my_registry.example:5000/app").is_err());
    }

    #[test]
    fn a_bracketed_host_that_is_not_ipv6_parses_but_not_as_a_url() {
        assert!(!ImageName::parse("[AB]/x").unwrap().kubelet_url_parses());
        assert!(
            !ImageName::parse("[1:2:3:4:5:6:7:8::]:5000/x")
                .unwrap()
                .kubelet_url_parses()
        );
        assert!(
            ImageName::parse("[::1]:5000/x")
                .unwrap()
                .kubelet_url_parses()
        );
    }
}
