//! A seeded generator of (registry keys, images) cases aimed at the corners of the kubelet's
//! keyring and of image-name normalization: ports, globs in every label position and inside
//! labels, IPv4 and IPv6 literals, uppercase, schemes, paths with and without a trailing
//! slash, `/v1/` and `/v2/`, every Docker Hub spelling, tags, digests, invalid names, keys the
//! kubelet's URL parsing cuts or refuses, and, for source secrets, the bytes of
//! `.dockerconfigjson` as Go's `encoding/json` reads them.
//!
//! Each case draws its keys and images from a few hosts, so that they meet often.

/// SplitMix64: small, seedable and the same everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

const HOSTS: &[&str] = &[
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "ghcr.io",
    "quay.io",
    "gcr.io",
    "registry.example.com",
    "sub.registry.example.com",
    "a.b.registry.io",
    "myacr.azurecr.io",
    "a.b.azurecr.io",
    "azurecr.io",
    "us-docker.pkg.dev",
    "123456789012.dkr.ecr.us-east-1.amazonaws.com",
    "registry.k8s.io",
    "prefix-good.kubernetes.io",
    "localhost",
    "127.0.0.1",
    "192.168.1.10",
    "10.0.0.1",
    "[::1]",
    "[fe80::1]",
    "[::A]",
    "[AB]",
    "[1:2:3:4:5:6:7:8]",
    "[1:2:3:4:5:6:7:8::]",
    "[::ffff]",
    "[:::1]",
    "MyRegistry",
    "REGISTRY.EXAMPLE.COM",
    "Registry.Example.com",
    "my_registry.example",
    "a_b.c",
    "a__b.io",
    "A",
    "myregistry",
    "x.y",
    "a-.io",
    "a..io",
    "xn--bcher-kva.example",
];

const PORTS: &[&str] = &[":5000", ":443", ":80", ":0", ":05000", ":65536", ":"];

const PATH_COMPONENTS: &[&str] = &[
    "library",
    "nginx",
    "acme",
    "acme-labs",
    "app",
    "corp",
    "team",
    "a",
    "b",
    "x",
    "web",
    "myorg",
    "myorganization",
    "coreos",
    "etcd",
    "pause",
    "proj",
    "repo",
    "img",
    "my_org",
    "a__b",
    "a.b",
    "a-b",
    "a--b",
    "v1",
    "v2",
    "1",
    "acme1",
];

const BAD_PATH_COMPONENTS: &[&str] = &["A", "-a", "a_", "a___b", "", "a.", "a..b", "Acme", "a b"];

const TAGS: &[&str] = &[
    "1.25", "latest", "v1", "a", "A_b-c.d", "5000", ".x", "-x", "", "x y",
];

const DIGESTS: &[&str] = &[
    "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
    "sha512:cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
    "sha384:38b060a751ac96384cd9327eb1b1e36a21fdb71114be07434c0cc7bf63f6e1da274edebfe76f65fbd51ad2f14898b95b",
    "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
    "sha256:abc",
    "md5:d41d8cd98f00b204e9800998ecf8427e",
    "sha256+b64:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
    "",
];

const WEIRD_IMAGES: &[&str] = &[
    "",
    "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
    "https://registry.example.com/app",
    "ghcr.io//app",
    "ghcr.io/app/",
    "/app",
    "ngi nx",
    "localhost:5000",
    "nginx:1.25:2",
    "nginx@",
    "ghcr.io/acme/app@sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824:x",
    "docker.io",
    "index.docker.io",
    "library",
    "[::1]:5000",
    "my_registry.example:5000/app",
    "Foo_bar/app",
    "a_b.c/Foo",
    "MyRegistry/App",
];

const HUB_KEYS: &[&str] = &[
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "https://index.docker.io/v1/",
    "https://index.docker.io/v2/",
    "http://index.docker.io/v1/",
    "index.docker.io/v1/",
    "https://index.docker.io/",
    "https://index.docker.io",
    "index.docker.io/",
    "docker.io/library",
    "docker.io/library/",
    "docker.io/library/nginx",
    "index.docker.io/library",
    "https://registry-1.docker.io/v2/",
    "docker.io/corp",
    "docker.io/myorg/",
    "DOCKER.IO",
];

/// Keys that exercise the kubelet's URL parsing rather than matching.
const WEIRD_KEYS: &[&str] = &[
    "[a-z]*/acme",
    "host[1-3].example.com",
    "reg[istry.io",
    "*",
    "*.*",
    "*.*.*",
    "**.io",
    "[::1]",
    "[::1]:5000",
    "[::A]",
    "[ab]:5000",
    "[1.2.3.4]:5000",
    "[fe80::1%25eth0]:5000",
    "a:1:2",
    "ghcr.io:http",
    "ghcr.io:",
    "ghcr.io:/acme",
    "ghcr.io?x",
    "ghcr.io/acme?x=1",
    "ghcr.io/acme#frag",
    "ghcr.io#x/acme",
    "ghcr.io/acme%3Fx",
    "ghcr.io/a%2Fb",
    "ghcr.io/%61cme",
    "ghcr.io/a%2561",
    "ghcr.io/%zz",
    "ghcr.io/%ff",
    "ghcr.io/acme%23x",
    "ghcr.io/acme%0a",
    "%67hcr.io",
    "gh%c3%a9.io",
    "robot:s3cret@ghcr.io/acme",
    "https://robot:s3cret@ghcr.io",
    "robot@ghcr.io",
    "a b@ghcr.io",
    "robot:s3/cr@et@ghcr.io",
    "ghcr .io",
    "ghcr.io/ acme",
    "ghcr.io/acme\t",
    "ghcr.io\\acme",
    "a\\b.io",
    "a]b.io",
    "a!b.io",
    "https:///acme",
    "https://",
    "http://",
    "",
    "HTTPS://ghcr.io",
    "https://https://ghcr.io",
    "ghcr.io/acme/*",
    "ghcr.io/[a]",
    "//ghcr.io",
    "ghcr.io//acme",
    "localhost/acme",
    "my_registry.example",
    "my_registry.example/a/",
    "ré.io",
    "ghcr.io/acmé",
];

const KEY_PATHS: &[&str] = &[
    "/",
    "/acme",
    "/acme/",
    "/library",
    "/library/",
    "/library/nginx",
    "/v1/",
    "/v2/",
    "/v1/acme",
    "/v2/acme/",
    "/v1",
    "/v2",
    "/v3/",
    "/acme-labs",
    "/a",
    "/team/app",
    "//",
    "/myorg",
    "/myorg/",
    "/corp",
];

/// What a generated case is about.
pub enum Flavor {
    /// Patterns written in the config (`registries`), spread over several secrets.
    Config,
    /// One source Secret whose `auths` keys are the patterns, as replication reads it.
    Source,
}

pub struct Case {
    pub flavor: Flavor,
    /// Config: the raw patterns of each secret. Source: the one secret's keys as Go decodes
    /// them, in the order of their entries (the entry's index is its id).
    pub secrets: Vec<Vec<String>>,
    /// Source: the `.dockerconfigjson` bytes.
    pub source_bytes: Option<Vec<u8>>,
    /// Source: the entry whose credentials carry no id (a null or empty entry).
    pub anonymous_entry: Option<usize>,
    pub images: Vec<String>,
}

/// The username that tells which entry the kubelet used: secret and key index.
pub fn entry_id(secret: usize, key: usize) -> String {
    format!("{secret}_{key}")
}

pub fn generate(rng: &mut Rng, images_per_case: usize) -> Case {
    let universe: Vec<&str> = (0..3).map(|_| rng.pick(HOSTS)).collect();
    let images = (0..images_per_case)
        .map(|_| image(rng, &universe))
        .collect();
    if rng.chance(50) {
        let secrets = (0..1 + rng.below(4))
            .map(|_| {
                let mut keys: Vec<String> = Vec::new();
                for _ in 0..1 + rng.below(5) {
                    let key = key(rng, &universe);
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
                keys
            })
            .collect();
        Case {
            flavor: Flavor::Config,
            secrets,
            source_bytes: None,
            anonymous_entry: None,
            images,
        }
    } else {
        let keys: Vec<String> = (0..1 + rng.below(6)).map(|_| key(rng, &universe)).collect();
        let (bytes, decoded, anonymous) = dockerconfigjson(rng, &keys);
        Case {
            flavor: Flavor::Source,
            secrets: vec![decoded],
            source_bytes: Some(bytes),
            anonymous_entry: anonymous,
            images,
        }
    }
}

fn mutate_case(rng: &mut Rng, s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    let letters: Vec<usize> = (0..chars.len())
        .filter(|&i| chars[i].is_ascii_lowercase())
        .collect();
    if !letters.is_empty() {
        let i = rng.pick(&letters);
        chars[i] = chars[i].to_ascii_uppercase();
    }
    chars.into_iter().collect()
}

fn path(rng: &mut Rng) -> String {
    let components = 1 + rng.below(3);
    (0..components)
        .map(|_| {
            if rng.chance(4) {
                rng.pick(BAD_PATH_COMPONENTS)
            } else {
                rng.pick(PATH_COMPONENTS)
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

pub fn image(rng: &mut Rng, universe: &[&str]) -> String {
    if rng.chance(4) {
        return rng.pick(WEIRD_IMAGES).to_string();
    }
    let mut image = String::new();
    if rng.chance(12) {
        // Docker Hub shorthand: no registry in the name.
        image.push_str(&path(rng));
    } else {
        let mut host = if rng.chance(8) {
            rng.pick(HOSTS).to_string()
        } else {
            rng.pick(universe).to_string()
        };
        if rng.chance(6) {
            host = mutate_case(rng, &host);
        }
        image.push_str(&host);
        if rng.chance(25) {
            image.push_str(rng.pick(PORTS));
        }
        image.push('/');
        if rng.chance(3) {
            // Around distribution/reference's 255-character limit on the repository path.
            let length = rng.pick(&[200usize, 254, 255, 256, 300]);
            image.push_str(&"a".repeat(length));
        } else {
            image.push_str(&path(rng));
        }
    }
    if rng.chance(35) {
        image.push(':');
        image.push_str(rng.pick(TAGS));
    }
    if rng.chance(12) {
        image.push('@');
        image.push_str(rng.pick(DIGESTS));
    }
    image
}

/// A host pattern made from `host` by globbing labels or parts of them.
fn glob(rng: &mut Rng, host: &str) -> String {
    if host.starts_with('[') {
        return host.to_string();
    }
    let mut labels: Vec<String> = host.split('.').map(str::to_string).collect();
    let i = rng.below(labels.len());
    match rng.below(9) {
        0 => labels[i] = "*".into(),
        1 => labels.iter_mut().for_each(|l| *l = "*".into()),
        2 => {
            let keep = labels[i].len().min(1 + rng.below(3));
            labels[i] = format!("{}*", &labels[i][..keep]);
        }
        3 => {
            let keep = labels[i].len().saturating_sub(1 + rng.below(3));
            labels[i] = format!("*{}", &labels[i][keep..]);
        }
        4 => {
            let label = &labels[i];
            labels[i] = match (label.chars().next(), label.chars().last()) {
                (Some(first), Some(last)) => format!("{first}*{last}"),
                _ => "*".into(),
            };
        }
        5 => labels[i] = format!("[a-z]{}", &labels[i]),
        6 => labels[i] = format!("{}[0-9]", &labels[i]),
        7 => return "*".into(),
        _ => labels.insert(i, "*".into()),
    }
    labels.join(".")
}

pub fn key(rng: &mut Rng, universe: &[&str]) -> String {
    if rng.chance(10) {
        return rng.pick(HUB_KEYS).to_string();
    }
    if rng.chance(8) {
        return rng.pick(WEIRD_KEYS).to_string();
    }
    let mut key = String::new();
    if rng.chance(25) {
        key.push_str(rng.pick(&["https://", "http://", "https://", "HTTPS://"]));
    }
    if rng.chance(3) {
        key.push_str(rng.pick(&["robot:s3cret@", "robot@", "a b@"]));
    }
    let mut host = rng.pick(universe).to_string();
    if rng.chance(35) {
        host = glob(rng, &host);
    }
    if rng.chance(5) {
        host = mutate_case(rng, &host);
    }
    key.push_str(&host);
    if rng.chance(20) {
        key.push_str(rng.pick(PORTS));
    }
    match rng.below(10) {
        0..=3 => {}
        4..=6 => key.push_str(rng.pick(KEY_PATHS)),
        _ => {
            // A prefix of the paths images are made of, with or without a trailing slash.
            key.push('/');
            key.push_str(&path(rng));
            if rng.chance(40) {
                key.push('/');
            }
        }
    }
    if rng.chance(3) {
        key.push_str(rng.pick(&["?x", "#f", "?", "%2F", "%3f"]));
    }
    key
}

/// `.dockerconfigjson` for `keys`, sometimes written in the ways Go's decoder accepts and
/// serde's does not, or the kubelet refuses. Returns the bytes, each entry's key as Go
/// decodes it, and the entry that carries no id, if any.
fn dockerconfigjson(rng: &mut Rng, keys: &[String]) -> (Vec<u8>, Vec<String>, Option<usize>) {
    let quirky = rng.chance(30);
    let mut decoded = Vec::with_capacity(keys.len());
    let mut anonymous = None;
    let mut entries: Vec<Vec<u8>> = Vec::with_capacity(keys.len());
    for (k, key) in keys.iter().enumerate() {
        let (key_json, key_decoded) = if quirky && rng.chance(15) {
            key_quirk(rng, key)
        } else {
            (json_string(key), key.clone())
        };
        let id = entry_id(0, k);
        let value: String = if quirky && rng.chance(25) {
            match rng.below(12) {
                0 if anonymous.is_none() => {
                    anonymous = Some(k);
                    "null".into()
                }
                1 if anonymous.is_none() => {
                    anonymous = Some(k);
                    r#"{"email": "e@x"}"#.into()
                }
                2 => format!(r#"{{"auth": "{}"}}"#, base64(&format!("{id}:pw"), true)),
                3 => format!(r#"{{"auth": "{}"}}"#, base64(&format!("{id}:pw"), false)),
                4 => {
                    let mut auth = base64(&format!("{id}:p"), true);
                    auth.insert_str(2, "\\r\\n");
                    format!(r#"{{"username": "ignored", "AUTH": "{auth}"}}"#)
                }
                5 => r#"{"auth": "!!"}"#.into(),
                6 => format!(r#"{{"auth": "{}"}}"#, base64("no-colon", true)),
                7 => format!(r#"{{"auth": "{}="}}"#, base64(&format!("{id}:p"), false)),
                8 => rng.pick(&[r#""x""#, "5", "[]", "true"]).to_string(),
                9 => format!(r#"{{"username": "{id}", "password": 1}}"#),
                10 => format!(r#"{{"username": "{id}", "auth": null, "x": [[{{}}]]}}"#),
                _ => format!(r#"{{"Username": "{id}", "PASSWORD": "p"}}"#),
            }
        } else {
            format!(r#"{{"username": "{id}", "password": "p"}}"#)
        };
        let mut entry = key_json;
        entry.extend_from_slice(b": ");
        entry.extend_from_slice(value.as_bytes());
        entries.push(entry);
        decoded.push(key_decoded);
    }
    let mut fields: Vec<Vec<u8>> = Vec::new();
    let auths_name = if quirky {
        rng.pick(&[
            "\"auths\"",
            "\"Auths\"",
            "\"AUTHS\"",
            "\"auth\\u017f\"",
            "\"auth\u{17F}\"",
        ])
    } else {
        "\"auths\""
    };
    let object = |entries: &[Vec<u8>]| {
        let mut o = b"{".to_vec();
        o.extend(entries.join(&b", "[..]));
        o.push(b'}');
        o
    };
    if quirky && entries.len() > 1 && rng.chance(30) {
        // Two auths objects: Go merges them.
        let split = 1 + rng.below(entries.len() - 1);
        let mut first = format!("{auths_name}: ").into_bytes();
        first.extend(object(&entries[..split]));
        let mut second = b"\"AUTHS\": ".to_vec();
        second.extend(object(&entries[split..]));
        fields.push(first);
        fields.push(second);
    } else {
        let mut only = format!("{auths_name}: ").into_bytes();
        only.extend(object(&entries));
        fields.push(only);
    }
    if quirky {
        match rng.below(10) {
            0 => fields.push(br#""HttpHeaders": {"User-Agent": "x"}"#.to_vec()),
            1 => fields.push(br#""httpHeaders": {"User-Agent": 1}"#.to_vec()),
            2 => fields.push(br#""credsStore": "desktop", "x": [[[1, {"a": null}]]]"#.to_vec()),
            3 => fields.push(br#""auths": null"#.to_vec()),
            4 => fields.insert(0, br#""auths": null"#.to_vec()),
            5 => fields.push(br#""auths": {}"#.to_vec()),
            6 => fields.push(br#""HttpHeaders": null"#.to_vec()),
            _ => {}
        }
    }
    let mut bytes = if quirky && rng.chance(2) {
        b"[".to_vec()
    } else {
        b"{".to_vec()
    };
    bytes.extend(fields.join(&b", "[..]));
    bytes.push(if bytes[0] == b'[' { b']' } else { b'}' });
    if quirky && rng.chance(1) {
        let depth = 10_001;
        let mut deep = b"{\"x\": ".to_vec();
        deep.extend(std::iter::repeat_n(b'[', depth));
        deep.extend(std::iter::repeat_n(b']', depth));
        deep.extend_from_slice(b", ");
        deep.extend_from_slice(&bytes[1..]);
        bytes = deep;
    }
    (bytes, decoded, anonymous)
}

/// A JSON string for `key` written so that Go decodes it to something else than serde would
/// read from the plain form, with what Go decodes it to.
fn key_quirk(rng: &mut Rng, key: &str) -> (Vec<u8>, String) {
    let plain = json_string(key);
    let at = 1 + rng.below(plain.len() - 1);
    let mut bytes = plain[..at].to_vec();
    let decoded_prefix = key_prefix_for(&plain[..at]);
    let rest_decoded =
        serde_json::from_slice::<String>(&[b"\"", &plain[at..]].concat()).unwrap_or_default();
    let (inserted, inserted_decoded): (&[u8], &str) = match rng.below(4) {
        0 => (b"\xff", "\u{FFFD}"),
        1 => (b"\\ud800", "\u{FFFD}"),
        2 => (b"\xe2\x82", "\u{FFFD}\u{FFFD}"),
        _ => (b"\\u0067", "g"),
    };
    // Only at a character boundary outside an escape.
    if decoded_prefix.is_none() {
        return (plain, key.to_string());
    }
    bytes.extend_from_slice(inserted);
    bytes.extend_from_slice(&plain[at..]);
    let decoded = format!(
        "{}{inserted_decoded}{rest_decoded}",
        decoded_prefix.unwrap_or_default()
    );
    (bytes, decoded)
}

/// The decoded text of a JSON string prefix (with its opening quote), if it ends cleanly.
fn key_prefix_for(prefix: &[u8]) -> Option<String> {
    let mut closed = prefix.to_vec();
    closed.push(b'"');
    serde_json::from_slice::<String>(&closed).ok()
}

fn json_string(s: &str) -> Vec<u8> {
    serde_json::to_vec(s).expect("a string serializes")
}

fn base64(text: &str, padded: bool) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
        if padded {
            out.push_str(&"=".repeat(3 - chunk.len()));
        }
    }
    out
}
