//! Reading a `kubernetes.io/dockerconfigjson` Secret as the kubelet reads it
//! (pkg/credentialprovider/secrets, Go's `encoding/json`): its registry keys, or the reason
//! the kubelet refuses it; and a stable hash of its data. Pure functions; nothing from the
//! data is ever logged.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::ByteString;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use thiserror::Error;

use crate::matching::Pattern;

pub const DOCKERCONFIGJSON_TYPE: &str = "kubernetes.io/dockerconfigjson";
pub const DOCKERCONFIGJSON_KEY: &str = ".dockerconfigjson";

/// Go's `encoding/json` nesting limit.
const MAX_NESTING_DEPTH: usize = 10_000;

#[derive(Debug, Error, PartialEq)]
pub enum DockerConfigError {
    #[error("type is {0:?}, expected {DOCKERCONFIGJSON_TYPE:?}")]
    WrongType(String),
    #[error("has no {DOCKERCONFIGJSON_KEY:?} key")]
    MissingKey,
    #[error("{DOCKERCONFIGJSON_KEY:?} is not a JSON object with \"auths\": {0}")]
    NotDockerConfig(String),
    #[error(
        "{DOCKERCONFIGJSON_KEY:?} is refused by the kubelet ({0}), which then pulls nothing for a pod that references it"
    )]
    KubeletRefuses(&'static str),
}

/// The patterns of a source Secret: its `auths` keys, read and normalized as the kubelet
/// does. A key the kubelet ignores is skipped here too; it is returned to be reported.
pub fn auth_patterns(
    secret_type: Option<&str>,
    data: Option<&BTreeMap<String, ByteString>>,
) -> Result<(Vec<Pattern>, Vec<String>), DockerConfigError> {
    let secret_type = secret_type.unwrap_or_default();
    if secret_type != DOCKERCONFIGJSON_TYPE {
        return Err(DockerConfigError::WrongType(secret_type.to_string()));
    }
    let bytes = data
        .and_then(|d| d.get(DOCKERCONFIGJSON_KEY))
        .ok_or(DockerConfigError::MissingKey)?;
    let mut patterns = Vec::new();
    let mut skipped = Vec::new();
    for key in auths_keys(&bytes.0)? {
        match Pattern::from_auths_key(&key) {
            Ok(p) => patterns.push(p),
            Err(_) => skipped.push(key),
        }
    }
    Ok((patterns, skipped))
}

/// The `auths` keys of `.dockerconfigjson` as Go's `json.Unmarshal` into the kubelet's
/// `DockerConfigJSON` leaves them: field names match case-insensitively, repeated `auths`
/// objects merge (a `null` one clears them), invalid UTF-8 and lone surrogates become U+FFFD,
/// and a value of the wrong type, or an `auth` that is not base64 of `user:password`, makes
/// the kubelet refuse the whole Secret.
fn auths_keys(bytes: &[u8]) -> Result<BTreeSet<String>, DockerConfigError> {
    let text = go_json_text(bytes)?;
    let mut deserializer = serde_json::Deserializer::from_slice(&text);
    // serde_json's messages can quote the offending value, a credential here: keep only
    // the kind of error and its position.
    let syntax = |e: serde_json::Error| {
        DockerConfigError::NotDockerConfig(format!(
            "{:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    };
    let config = deserializer
        .deserialize_any(DockerConfigVisitor)
        .map_err(syntax)?;
    deserializer.end().map_err(syntax)?;
    if let Some(reason) = config.refusal {
        return Err(DockerConfigError::KubeletRefuses(reason));
    }
    Ok(config.auths.unwrap_or_default())
}

/// Rewrites what Go decodes leniently and serde_json refuses: in strings, each byte that is
/// not part of valid UTF-8 and each `\u` surrogate that is not half of a pair become U+FFFD.
/// Also enforces Go's nesting limit. Anything else is left for serde_json, whose syntax
/// errors are Go's.
fn go_json_text(bytes: &[u8]) -> Result<Cow<'_, [u8]>, DockerConfigError> {
    let mut out: Option<Vec<u8>> = None;
    let mut depth = 0usize;
    let mut in_string = false;
    let mut i = 0;
    // Copies bytes[i..i + n] unless a rewrite has started, then pushes `with` instead.
    while i < bytes.len() {
        let b = bytes[i];
        let (consumed, replacement): (usize, Option<&[u8]>) = if !in_string {
            match b {
                b'{' | b'[' => {
                    depth += 1;
                    if depth > MAX_NESTING_DEPTH {
                        return Err(DockerConfigError::KubeletRefuses(
                            "nested more than 10000 levels deep",
                        ));
                    }
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                b'"' => in_string = true,
                _ => {}
            }
            (1, None)
        } else if b == b'"' {
            in_string = false;
            (1, None)
        } else if b == b'\\' {
            match (bytes.get(i + 1), hex4(bytes.get(i + 2..i + 6))) {
                (Some(b'u'), Some(unit)) if (0xD800..0xE000).contains(&unit) => {
                    let low = match bytes.get(i + 6..i + 8) {
                        Some(b"\\u") => hex4(bytes.get(i + 8..i + 12)),
                        _ => None,
                    };
                    let pair = (0xD800..0xDC00).contains(&unit)
                        && low.is_some_and(|l| (0xDC00..0xE000).contains(&l));
                    if pair {
                        (12, None)
                    } else {
                        (6, Some(b"\\uFFFD".as_slice()))
                    }
                }
                (Some(_), _) => (2, None),
                (None, _) => (1, None),
            }
        } else if b < 0x80 {
            (1, None)
        } else {
            let width = match b {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF7 => 4,
                _ => 1,
            };
            match bytes.get(i..i + width).map(std::str::from_utf8) {
                Some(Ok(_)) => (width, None),
                _ => (1, Some("\u{FFFD}".as_bytes())),
            }
        };
        match (replacement, &mut out) {
            (Some(with), Some(out)) => out.extend_from_slice(with),
            (Some(with), None) => {
                let mut started = bytes[..i].to_vec();
                started.extend_from_slice(with);
                out = Some(started);
            }
            (None, Some(out)) => out.extend_from_slice(&bytes[i..i + consumed]),
            (None, None) => {}
        }
        i += consumed;
    }
    Ok(out.map_or(Cow::Borrowed(bytes), Cow::Owned))
}

fn hex4(digits: Option<&[u8]>) -> Option<u32> {
    let digits = std::str::from_utf8(digits?).ok()?;
    if digits.len() != 4 {
        return None;
    }
    u32::from_str_radix(digits, 16).ok()
}

/// Go's case-insensitive field matching (`foldName`): ASCII letters, plus the four
/// non-ASCII letters whose simple case folding lands on one.
fn go_field_is(key: &str, field: &str) -> bool {
    let folded = key.chars().map(|c| match c {
        '\u{130}' | '\u{131}' => 'I',
        '\u{17F}' => 'S',
        '\u{212A}' => 'K',
        c => c.to_ascii_uppercase(),
    });
    folded.eq(field.chars().map(|c| c.to_ascii_uppercase()))
}

#[derive(Default)]
struct DockerConfig {
    /// None when absent or last set to null (Go's nil map).
    auths: Option<BTreeSet<String>>,
    refusal: Option<&'static str>,
}

impl DockerConfig {
    fn refuse(&mut self, reason: &'static str) {
        self.refusal.get_or_insert(reason);
    }
}

struct DockerConfigVisitor;

impl<'de> Visitor<'de> for DockerConfigVisitor {
    type Value = DockerConfig;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a dockerconfigjson object")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(DockerConfig::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut config = DockerConfig::default();
        while let Some(key) = map.next_key::<String>()? {
            if go_field_is(&key, "auths") {
                match map.next_value::<Shape<AuthsObject>>()? {
                    Shape::Null => config.auths = None,
                    Shape::Object(entries) => {
                        let mut refusal = None;
                        let auths = config.auths.get_or_insert_with(BTreeSet::new);
                        for (key, entry_ok) in entries.0 {
                            auths.insert(key);
                            refusal = refusal.or(entry_ok.err());
                        }
                        if let Some(reason) = refusal {
                            config.refuse(reason);
                        }
                    }
                    Shape::Other => config.refuse("auths is not an object"),
                }
            } else if go_field_is(&key, "HttpHeaders") {
                match map.next_value::<Shape<StringMap>>()? {
                    Shape::Object(StringMap(true)) | Shape::Null => {}
                    Shape::Object(StringMap(false)) | Shape::Other => {
                        config.refuse("HttpHeaders is not an object of strings")
                    }
                }
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(config)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        skip_seq(seq)?;
        Ok(refused("it is not a JSON object"))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(refused("it is not a JSON object"))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(refused("it is not a JSON object"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(refused("it is not a JSON object"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(refused("it is not a JSON object"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(refused("it is not a JSON object"))
    }
}

fn refused(reason: &'static str) -> DockerConfig {
    DockerConfig {
        auths: None,
        refusal: Some(reason),
    }
}

fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// A JSON value that should be an object: null, the object read by `T`, or anything else
/// (consumed and reported, as Go reports a type error and reads on).
enum Shape<T> {
    Null,
    Object(T),
    Other,
}

/// How an object is read inside [`Shape`].
trait ObjectReader: Sized {
    fn read<'de, A: MapAccess<'de>>(map: A) -> Result<Self, A::Error>;
}

impl<'de, T: ObjectReader> serde::Deserialize<'de> for Shape<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ShapeVisitor(std::marker::PhantomData))
    }
}

struct ShapeVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: ObjectReader> Visitor<'de> for ShapeVisitor<T> {
    type Value = Shape<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Shape::Null)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::read(map).map(Shape::Object)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        skip_seq(seq)?;
        Ok(Shape::Other)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }
}

/// The `auths` object: each key, and whether the kubelet accepts its entry.
struct AuthsObject(Vec<(String, Result<(), &'static str>)>);

impl ObjectReader for AuthsObject {
    fn read<'de, A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let entry = match map.next_value::<Shape<Entry>>()? {
                // The entry's UnmarshalJSON reads null as an empty entry.
                Shape::Null => Ok(()),
                Shape::Object(entry) => entry.check(),
                Shape::Other => Err("an auths entry is not an object"),
            };
            entries.push((key, entry));
        }
        Ok(Self(entries))
    }
}

/// One `auths` entry (`DockerConfigEntry.UnmarshalJSON`): the string fields it reads.
#[derive(Default)]
struct Entry {
    /// The last non-null `auth` (a null leaves a Go string as it was).
    auth: Option<String>,
    wrong_type: bool,
}

impl Entry {
    fn check(self) -> Result<(), &'static str> {
        if self.wrong_type {
            return Err("an auths entry's username, password, email or auth is not a string");
        }
        match self.auth {
            Some(auth) if !auth.is_empty() && !is_user_password_base64(&auth) => {
                Err("an auths entry's auth is not base64 of user:password")
            }
            _ => Ok(()),
        }
    }
}

impl ObjectReader for Entry {
    fn read<'de, A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut entry = Entry::default();
        while let Some(key) = map.next_key::<String>()? {
            let is_auth = go_field_is(&key, "auth");
            if is_auth
                || ["username", "password", "email"]
                    .iter()
                    .any(|f| go_field_is(&key, f))
            {
                match map.next_value::<Scalar>()? {
                    Scalar::Null => {}
                    Scalar::String(value) => {
                        if is_auth {
                            entry.auth = Some(value);
                        }
                    }
                    Scalar::Other => entry.wrong_type = true,
                }
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(entry)
    }
}

/// A value that should be a string: Go leaves a string field as it is on null and reports
/// a type error on anything else.
enum Scalar {
    Null,
    String(String),
    Other,
}

impl<'de> serde::Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_str<E>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Scalar::String(value.to_string()))
    }
    fn visit_string<E>(self, value: String) -> Result<Self::Value, E> {
        Ok(Scalar::String(value))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        skip_seq(seq)?;
        Ok(Scalar::Other)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
}

/// `HttpHeaders`: whether every value is a string (or null).
struct StringMap(bool);

impl ObjectReader for StringMap {
    fn read<'de, A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut all_strings = true;
        while map.next_key::<IgnoredAny>()?.is_some() {
            if matches!(map.next_value::<Scalar>()?, Scalar::Other) {
                all_strings = false;
            }
        }
        Ok(Self(all_strings))
    }
}

/// The kubelet's `decodeDockerConfigFieldAuth`: padded base64 when the trimmed field ends in
/// `=`, unpadded otherwise (Go's decoders skip `\r` and `\n` and ignore trailing bits), and
/// the decoded text must hold a `:`.
fn is_user_password_base64(field: &str) -> bool {
    let padded = field.trim().ends_with('=');
    let symbols: Vec<u8> = field
        .bytes()
        .filter(|b| !matches!(b, b'\r' | b'\n'))
        .collect();
    let (body, padding) = if padded {
        if !symbols.len().is_multiple_of(4) {
            return false;
        }
        let padding = symbols.iter().rev().take_while(|&&b| b == b'=').count();
        if padding > 2 {
            return false;
        }
        (&symbols[..symbols.len() - padding], padding)
    } else {
        (&symbols[..], 0)
    };
    if body.len() % 4 == 1 || (padded && !(body.len() + padding).is_multiple_of(4)) {
        return false;
    }
    let mut sextets = Vec::with_capacity(body.len());
    for &b in body {
        match base64_value(b) {
            Some(v) => sextets.push(v),
            None => return false,
        }
    }
    let mut decoded = Vec::with_capacity(sextets.len() * 3 / 4);
    for chunk in sextets.chunks(4) {
        let bits = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &v)| acc | u32::from(v) << (18 - 6 * i));
        let bytes = bits.to_be_bytes();
        decoded.extend_from_slice(&bytes[1..chunk.len()]);
    }
    decoded.contains(&b':')
}

fn base64_value(b: u8) -> Option<u8> {
    match b {
        b'A'..=b'Z' => Some(b - b'A'),
        b'a'..=b'z' => Some(b - b'a' + 26),
        b'0'..=b'9' => Some(b - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// A stable hash of a Secret's type and data: copies carry it to tell whether they are
/// current without comparing (or logging) the data itself.
pub fn data_hash(secret_type: Option<&str>, data: Option<&BTreeMap<String, ByteString>>) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(secret_type.unwrap_or_default().as_bytes());
    for (key, value) in data.into_iter().flatten() {
        ctx.update(&(key.len() as u64).to_be_bytes());
        ctx.update(key.as_bytes());
        ctx.update(&(value.0.len() as u64).to_be_bytes());
        ctx.update(&value.0);
    }
    let digest = ctx.finish();
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(json: &str) -> BTreeMap<String, ByteString> {
        BTreeMap::from([(
            DOCKERCONFIGJSON_KEY.to_string(),
            ByteString(json.as_bytes().to_vec()),
        )])
    }

    #[test]
    fn auths_keys_become_patterns_as_the_kubelet_normalizes_them() {
        let d = data(
            r#"{"auths": {"https://index.docker.io/v1/": {"auth": "eDp5"}, "ghcr.io/acme/": {}, "bad key": {}}}"#,
        );
        let (patterns, skipped) = auth_patterns(Some(DOCKERCONFIGJSON_TYPE), Some(&d)).unwrap();
        let keys: Vec<&str> = patterns.iter().map(Pattern::key).collect();
        assert_eq!(keys, ["ghcr.io/acme/", "index.docker.io"]);
        assert_eq!(skipped, ["bad key"]);
    }

    #[test]
    fn wrong_type_missing_key_and_bad_json_are_errors_that_do_not_echo_the_data() {
        assert_eq!(
            auth_patterns(Some("Opaque"), Some(&data("{}"))).unwrap_err(),
            DockerConfigError::WrongType("Opaque".into())
        );
        assert_eq!(
            auth_patterns(Some(DOCKERCONFIGJSON_TYPE), None).unwrap_err(),
            DockerConfigError::MissingKey
        );
        let err = auth_patterns(
            Some(DOCKERCONFIGJSON_TYPE),
            Some(&data("{\"auths\": \"hunter2\"}")),
        )
        .unwrap_err()
        .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    fn keys(json: &[u8]) -> Result<Vec<String>, DockerConfigError> {
        let data = BTreeMap::from([(DOCKERCONFIGJSON_KEY.to_string(), ByteString(json.to_vec()))]);
        auth_patterns(Some(DOCKERCONFIGJSON_TYPE), Some(&data))
            .map(|(patterns, _)| patterns.iter().map(|p| p.key().to_string()).collect())
    }

    #[test]
    fn field_names_match_as_go_matches_them_and_repeated_auths_merge() {
        assert_eq!(keys(br#"{"Auths": {"a.io": {}}}"#).unwrap(), ["a.io"]);
        assert_eq!(
            keys("{\"auth\u{17F}\": {\"a.io\": {}}}".as_bytes()).unwrap(),
            ["a.io"],
            "U+017F folds to S"
        );
        assert_eq!(
            keys(br#"{"auths": {"a.io": {}}, "AUTHS": {"b.io": null}}"#).unwrap(),
            ["a.io", "b.io"]
        );
        assert!(
            keys(br#"{"auths": {"a.io": {}}, "auths": null}"#)
                .unwrap()
                .is_empty()
        );
        assert!(keys(b"null").unwrap().is_empty());
    }

    #[test]
    fn entries_the_kubelet_cannot_decode_refuse_the_whole_secret() {
        for json in [
            &br#"{"auths": {"a.io": {"auth": "not base64!"}}}"#[..],
            br#"{"auths": {"a.io": {"auth": "eHk="}, "b.io": {}}}"#,
            br#"{"auths": {"a.io": {"auth": "eDp5="}}}"#,
            br#"{"auths": {"a.io": "x"}}"#,
            br#"{"auths": {"a.io": {"Username": 1}}}"#,
            br#"{"auths": []}"#,
            br#"{"auths": {}, "httpheaders": {"x": 1}}"#,
            br#"["auths"]"#,
        ] {
            assert!(
                matches!(keys(json), Err(DockerConfigError::KubeletRefuses(_))),
                "{}",
                String::from_utf8_lossy(json)
            );
        }
        let deep = format!("{{\"x\": {}{}}}", "[".repeat(10_001), "]".repeat(10_001));
        assert!(matches!(
            keys(deep.as_bytes()),
            Err(DockerConfigError::KubeletRefuses(_))
        ));
    }

    #[test]
    fn auth_fields_decode_as_go_decodes_them() {
        for (auth, ok) in [
            ("eDp5", true),
            (r"eDp5\r\n", true),
            ("eDp5eg==", true),
            ("eDp5eg", true),
            ("eDp5e", false),
            ("eDp5eg=", false),
            ("eDp5eg==x", false),
            ("eHk", false),
            ("eDp5 ", false),
        ] {
            let json = format!(r#"{{"auths": {{"a.io": {{"auth": "{auth}"}}}}}}"#);
            assert_eq!(keys(json.as_bytes()).is_ok(), ok, "{auth:?}");
        }
    }

    #[test]
    fn text_go_decodes_leniently_is_read_not_refused() {
        // A byte that is not UTF-8 and a lone surrogate become U+FFFD in Go.
        let mut json = br#"{"auths": {"a.io": {}, "b"#.to_vec();
        json.extend_from_slice(b"\xff\\ud800.io\": {}}}");
        assert_eq!(keys(&json).unwrap(), ["a.io", "b\u{FFFD}\u{FFFD}.io"]);
        // The kubelet reads a key with a query as the host before it.
        assert_eq!(
            keys(br#"{"auths": {"ghcr.io?x=1": {}}}"#).unwrap(),
            ["ghcr.io"]
        );
    }

    #[test]
    fn hash_changes_with_the_data_and_only_with_it() {
        let a = data(r#"{"auths": {"x.io": {"auth": "a"}}}"#);
        let b = data(r#"{"auths": {"x.io": {"auth": "b"}}}"#);
        let t = Some(DOCKERCONFIGJSON_TYPE);
        assert_eq!(data_hash(t, Some(&a)), data_hash(t, Some(&a.clone())));
        assert_ne!(data_hash(t, Some(&a)), data_hash(t, Some(&b)));
        assert!(data_hash(t, Some(&a)).starts_with("sha256:"));
    }
}
