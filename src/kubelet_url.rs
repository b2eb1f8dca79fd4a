//! The parts of Go's `net/url`, `net/netip` and `net.SplitHostPort` that decide what the
//! kubelet's keyring (pkg/credentialprovider/keyring.go) makes of a registry key and of an
//! image name. The keyring reads both as URLs: a key it cannot parse is ignored, `%`-escapes
//! are decoded, `?` and `#` end the path, user information is dropped, and a bracketed host
//! must be an IPv6 address. Behaviour follows Go 1.26 with its default GODEBUG settings (the
//! kubelet's go.mod says `godebug default=go1.26`); tests/kubelet_oracle.rs checks it against
//! the kubelet's own code.
//!
//! Go strings are bytes: decoding `%ff` yields a byte that is not UTF-8, so this works on bytes.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UrlError {
    #[error("it contains a control character")]
    ControlCharacter,
    #[error("it does not start with http:// or https://")]
    NoScheme,
    #[error("{0:?} is not a valid %-escape")]
    InvalidEscape(String),
    #[error("{0:?} is not allowed in a registry host")]
    InvalidHostCharacter(char),
    #[error("port {0:?} is not a number")]
    InvalidPort(String),
    #[error("a bracketed host must be an IPv6 address, and '[' may only open it")]
    InvalidIpLiteral,
    #[error("the user information before '@' has characters a URL does not allow")]
    InvalidUserInfo,
}

/// What the keyring keeps of a parsed URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `url.URL.Host`: host and port, `%`-escapes decoded, brackets kept.
    pub host: Vec<u8>,
    /// `url.URL.Path`, decoded: empty or starting with `/`.
    pub path: Vec<u8>,
    /// Whether user information (`user:password@`) was dropped.
    pub had_user_info: bool,
}

/// `url.Parse` of an `http://` or `https://` URL.
pub fn parse(raw: &[u8]) -> Result<Url, UrlError> {
    let (before_fragment, fragment) = match raw.iter().position(|&b| b == b'#') {
        Some(hash) => (&raw[..hash], Some(&raw[hash + 1..])),
        None => (raw, None),
    };
    if before_fragment.iter().any(|&b| b < b' ' || b == 0x7f) {
        return Err(UrlError::ControlCharacter);
    }
    let rest = before_fragment
        .strip_prefix(b"https://")
        .or_else(|| before_fragment.strip_prefix(b"http://"))
        .ok_or(UrlError::NoScheme)?;
    // The query starts at the first '?', and is not validated.
    let rest = &rest[..rest.iter().position(|&b| b == b'?').unwrap_or(rest.len())];
    let (authority, path) =
        rest.split_at(rest.iter().position(|&b| b == b'/').unwrap_or(rest.len()));
    let (user_info, host) = match authority.iter().rposition(|&b| b == b'@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let host = parse_host(host)?;
    if let Some(user_info) = user_info {
        if !user_info.iter().all(|&b| is_user_info_byte(b)) {
            return Err(UrlError::InvalidUserInfo);
        }
        unescape(user_info, Mode::Other)?;
    }
    let path = unescape(path, Mode::Other)?;
    if let Some(fragment) = fragment {
        unescape(fragment, Mode::Other)?;
    }
    Ok(Url {
        host,
        path,
        had_user_info: user_info.is_some(),
    })
}

/// `parseHost` with strict colons (Go 1.26's `urlstrictcolons=1`).
fn parse_host(host: &[u8]) -> Result<Vec<u8>, UrlError> {
    match host.iter().rposition(|&b| b == b'[') {
        Some(0) => {
            let close = host
                .iter()
                .rposition(|&b| b == b']')
                .ok_or(UrlError::InvalidIpLiteral)?;
            let colon_port = &host[close + 1..];
            check_optional_port(colon_port)?;
            let inner = &host[1..close];
            let unescaped = match find(inner, b"%25") {
                Some(zone) => {
                    let mut address = unescape(&inner[..zone], Mode::Host)?;
                    address.extend(unescape(&inner[zone..], Mode::Zone)?);
                    address
                }
                None => unescape(inner, Mode::Host)?,
            };
            if !is_ipv6_address(&unescaped) {
                return Err(UrlError::InvalidIpLiteral);
            }
            let mut out = Vec::with_capacity(unescaped.len() + 2 + colon_port.len());
            out.push(b'[');
            out.extend_from_slice(&unescaped);
            out.push(b']');
            out.extend_from_slice(colon_port);
            Ok(out)
        }
        Some(_) => Err(UrlError::InvalidIpLiteral),
        None => {
            if let Some(colon) = host.iter().position(|&b| b == b':') {
                // A second colon lands in the "port" and fails the digit check.
                check_optional_port(&host[colon..])?;
            }
            unescape(host, Mode::Host)
        }
    }
}

fn check_optional_port(colon_port: &[u8]) -> Result<(), UrlError> {
    match colon_port.split_first() {
        None => Ok(()),
        Some((b':', digits)) if digits.iter().all(u8::is_ascii_digit) => Ok(()),
        Some(_) => Err(UrlError::InvalidPort(
            String::from_utf8_lossy(colon_port.strip_prefix(b":").unwrap_or(colon_port))
                .into_owned(),
        )),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Host,
    Zone,
    /// Path, fragment and user information: only the escapes are checked.
    Other,
}

/// `unescape`: `%XX` decoded; in a host, only non-ASCII bytes (and `%25`) may be escaped and
/// only the characters of `is_host_byte` may appear.
fn unescape(s: &[u8], mode: Mode) -> Result<Vec<u8>, UrlError> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if b == b'%' {
            let escape = s.get(i..i + 3).unwrap_or(&s[i..]);
            let invalid = || UrlError::InvalidEscape(String::from_utf8_lossy(escape).into_owned());
            let (Some(hi), Some(lo)) = (
                s.get(i + 1).copied().and_then(hex_value),
                s.get(i + 2).copied().and_then(hex_value),
            ) else {
                return Err(invalid());
            };
            let value = hi << 4 | lo;
            let is_escaped_percent = escape == b"%25";
            match mode {
                Mode::Host if hi < 8 && !is_escaped_percent => return Err(invalid()),
                Mode::Zone if !is_escaped_percent && value != b' ' && !is_host_byte(value) => {
                    return Err(invalid());
                }
                _ => {}
            }
            out.push(value);
            i += 3;
            continue;
        }
        if matches!(mode, Mode::Host | Mode::Zone) && b < 0x80 && !is_host_byte(b) {
            return Err(UrlError::InvalidHostCharacter(char::from(b)));
        }
        out.push(b);
        i += 1;
    }
    Ok(out)
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

/// ASCII bytes Go's `net/url` leaves unescaped in a host (and an IPv6 zone).
fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]<>\"".contains(&b)
}

/// `validUserinfo`, over bytes: any non-ASCII byte is a rune it refuses.
fn is_user_info_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._:~!$&'()*+,;=%@".contains(&b)
}

/// `netip.ParseAddr(s)` gives an IPv6 address (with or without zone); an IPv4 address is
/// refused in brackets, as `net/url` does.
pub fn is_ipv6_address(s: &[u8]) -> bool {
    match s.iter().find(|&&b| matches!(b, b'.' | b':' | b'%')) {
        Some(b':') => is_ipv6(s),
        _ => false,
    }
}

/// netip's `parseIPv6`.
fn is_ipv6(s: &[u8]) -> bool {
    let s = match s.iter().position(|&b| b == b'%') {
        Some(zone) if zone + 1 == s.len() => return false,
        Some(zone) => &s[..zone],
        None => s,
    };
    let mut rest = s;
    let mut ellipsis = false;
    if rest.starts_with(b"::") {
        ellipsis = true;
        rest = &rest[2..];
        if rest.is_empty() {
            return true;
        }
    }
    // Bytes of the address filled so far (two per group, four for an embedded IPv4).
    let mut filled = 0;
    while filled < 16 {
        let digits = rest.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 || digits > 4 {
            return false;
        }
        if rest.get(digits) == Some(&b'.') {
            if (!ellipsis && filled != 12) || filled + 4 > 16 || !is_ipv4_fields(rest) {
                return false;
            }
            rest = &[];
            filled += 4;
            break;
        }
        filled += 2;
        rest = &rest[digits..];
        let Some((&first, after)) = rest.split_first() else {
            break;
        };
        if first != b':' || after.is_empty() {
            return false;
        }
        rest = after;
        if rest[0] == b':' {
            if ellipsis {
                return false;
            }
            ellipsis = true;
            rest = &rest[1..];
            if rest.is_empty() {
                break;
            }
        }
    }
    rest.is_empty() && (filled < 16) == ellipsis
}

/// netip's `parseIPv4Fields`: four decimal octets, no leading zeros.
fn is_ipv4_fields(s: &[u8]) -> bool {
    let fields: Vec<&[u8]> = s.split(|&b| b == b'.').collect();
    fields.len() == 4
        && fields.iter().all(|f| {
            !f.is_empty()
                && f.iter().all(u8::is_ascii_digit)
                && (f.len() == 1 || f[0] != b'0')
                && f.len() <= 3
                && f.iter().fold(0u32, |v, d| v * 10 + u32::from(d - b'0')) <= 255
        })
}

/// `net.SplitHostPort`, falling back to the whole host and no port when it fails, as the
/// keyring's `SplitURL` does.
pub fn split_host_port(host: &str) -> (&str, &str) {
    let Some(last_colon) = host.rfind(':') else {
        return (host, "");
    };
    let (hostname, after_brackets) = if host.starts_with('[') {
        let Some(close) = host.find(']') else {
            return (host, "");
        };
        if close + 1 != last_colon {
            return (host, "");
        }
        (&host[1..close], close + 1)
    } else {
        let hostname = &host[..last_colon];
        if hostname.contains(':') {
            return (host, "");
        }
        (hostname, 0)
    };
    let unexpected_open = host.strip_prefix('[').unwrap_or(host).contains('[');
    if unexpected_open || host[after_brackets..].contains(']') {
        return (host, "");
    }
    (hostname, &host[last_colon + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn parsed(raw: &str) -> Option<(String, String)> {
        parse(raw.as_bytes()).ok().map(|u| {
            (
                String::from_utf8_lossy(&u.host).into_owned(),
                String::from_utf8_lossy(&u.path).into_owned(),
            )
        })
    }

    #[rstest]
    #[case::host("https://ghcr.io", "ghcr.io", "")]
    #[case::path("https://ghcr.io/acme/", "ghcr.io", "/acme/")]
    #[case::query_ends_the_path("https://ghcr.io/acme?x/y", "ghcr.io", "/acme")]
    #[case::query_before_the_path("https://ghcr.io?x/acme", "ghcr.io", "")]
    #[case::fragment("https://ghcr.io/a#b", "ghcr.io", "/a")]
    #[case::user_info_dropped("https://robot:s3cret@ghcr.io/a", "ghcr.io", "/a")]
    #[case::escapes_decoded("https://ghcr.io/a%3Fb%2F", "ghcr.io", "/a?b/")]
    #[case::empty_port("https://ghcr.io:", "ghcr.io:", "")]
    #[case::ipv6("https://[::1]:5000/x", "[::1]:5000", "/x")]
    #[case::ipv6_zone("https://[fe80::1%25eth0]", "[fe80::1%eth0]", "")]
    #[case::glob("http://*.azurecr.io", "*.azurecr.io", "")]
    #[case::closing_bracket_alone("https://a]b", "a]b", "")]
    #[case::space_in_path("https://ghcr.io/a b", "ghcr.io", "/a b")]
    fn parses_like_go(#[case] raw: &str, #[case] host: &str, #[case] path: &str) {
        assert_eq!(parsed(raw), Some((host.to_string(), path.to_string())));
    }

    #[rstest]
    #[case::class("https://[a-z]*/acme")]
    #[case::bracket_inside("https://host[1-3].example.com")]
    #[case::not_ipv6("https://[ab]:5000")]
    #[case::ipv4_in_brackets("https://[1.2.3.4]")]
    #[case::two_colons("https://a:1:2")]
    #[case::port_letters("https://ghcr.io:http")]
    #[case::backslash("https://a\\b.io")]
    #[case::space_in_host("https://a b.io")]
    #[case::ascii_escape_in_host("https://%41.io")]
    #[case::bad_escape("https://ghcr.io/%zz")]
    #[case::bad_escape_in_fragment("https://ghcr.io#%z")]
    #[case::control("https://ghcr.io/\n")]
    #[case::user_info("https://a b@ghcr.io")]
    fn refuses_like_go(#[case] raw: &str) {
        assert_eq!(parsed(raw), None, "{raw:?}");
    }

    #[rstest]
    #[case("::", true)]
    #[case("::1", true)]
    #[case("1::", true)]
    #[case("1:2:3:4:5:6:7:8", true)]
    #[case("1:2:3:4:5:6:7::", true)]
    #[case("1:2:3:4:5:6:7:8::", false)]
    #[case("::1:2:3:4:5:6:7:8", false)]
    #[case("1:2:3:4:5:6:7", false)]
    #[case("12345::", false)]
    #[case("1::2::3", false)]
    #[case("::ffff:1.2.3.4", true)]
    #[case("::ffff:1.2.3.04", false)]
    #[case("fe80::1%eth0", true)]
    #[case("fe80::1%", false)]
    #[case("1.2.3.4", false)]
    #[case("ab", false)]
    #[case(":", false)]
    #[case("1:", false)]
    fn ipv6_like_netip(#[case] s: &str, #[case] valid: bool) {
        assert_eq!(is_ipv6_address(s.as_bytes()), valid, "{s:?}");
    }

    #[rstest]
    #[case("ghcr.io", "ghcr.io", "")]
    #[case("ghcr.io:5000", "ghcr.io", "5000")]
    #[case("ghcr.io:", "ghcr.io", "")]
    #[case("[::1]:5000", "::1", "5000")]
    #[case("[::1]", "[::1]", "")]
    #[case("a:b:5000", "a:b:5000", "")]
    #[case("a]b:5000", "a]b:5000", "")]
    #[case("[a]b]:1", "[a]b]:1", "")]
    fn splits_host_and_port_like_go(#[case] host: &str, #[case] name: &str, #[case] port: &str) {
        assert_eq!(split_host_port(host), (name, port));
    }
}
