//! A kubelet credential provider plugin for tests. It reads a CredentialProviderRequest on
//! stdin and answers a CredentialProviderResponse on stdout, as ecr-credential-provider and
//! its kind do, with a new token each time: `fake-<counter>-<random>`.
//!
//! Flags (the CredentialProviderConfig's `args`):
//! - `--state-dir DIR` (required): `DIR/counter` numbers the tokens, `DIR/token` is the last
//!   one issued, `DIR/requests` gets every request, one JSON per line, and `DIR/mode` (absent
//!   means `ok`) says how to behave: `ok`, `fail` (exit 1 with an error on stderr), `leak`
//!   (print the last token on stderr, then fail), `malformed` (not JSON),
//!   `wrong-api-version`, `wrong-kind`, `empty` (no credentials), `hang` (sleep an hour).
//! - `--cache-duration D`: the response's cacheDuration (a Go duration); absent, none is sent
//!   and the provider's defaultCacheDuration applies.
//! - `--username U` (default `fake`), `--key K` (the auth key; default the image's registry).
//! - `--htpasswd FILE`: before answering, replace FILE with `U:<bcrypt of the new token>`, so
//!   that a registry reading it accepts the newest token only, as a registry accepts the
//!   credentials its token service has just issued.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

struct Args {
    state_dir: PathBuf,
    cache_duration: Option<String>,
    username: String,
    key: Option<String>,
    htpasswd: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut state_dir = None;
    let mut cache_duration = None;
    let mut username = "fake".to_string();
    let mut key = None;
    let mut htpasswd = None;
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--state-dir" => state_dir = Some(PathBuf::from(value()?)),
            "--cache-duration" => cache_duration = Some(value()?),
            "--username" => username = value()?,
            "--key" => key = Some(value()?),
            "--htpasswd" => htpasswd = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        state_dir: state_dir.ok_or("--state-dir is required")?,
        cache_duration,
        username,
        key,
        htpasswd,
    })
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(message) => {
            eprintln!("fake-credential-provider: {message}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode, String> {
    let args = parse_args()?;
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("reading stdin: {e}"))?;
    append(&args.state_dir.join("requests"), input.trim())?;
    let request: serde_json::Value =
        serde_json::from_str(&input).map_err(|e| format!("the request is not JSON: {e}"))?;
    let api_version = request["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !api_version.starts_with("credentialprovider.kubelet.k8s.io/")
        || request["kind"] != "CredentialProviderRequest"
    {
        return Err(format!("not a CredentialProviderRequest: {input}"));
    }
    let image = request["image"].as_str().unwrap_or_default();
    if image.is_empty() {
        return Err("the request names no image".into());
    }
    let mode = std::fs::read_to_string(args.state_dir.join("mode")).unwrap_or_default();
    let mode = mode.trim();
    let (api_version, kind) = match mode {
        "" | "ok" | "empty" => (api_version, "CredentialProviderResponse"),
        "fail" => {
            eprintln!("fake-credential-provider: calling the token service");
            eprintln!(
                "fake-credential-provider: AccessDenied: not authorized to issue tokens for {image}"
            );
            return Ok(ExitCode::FAILURE);
        }
        "leak" => {
            let last = std::fs::read_to_string(args.state_dir.join("token")).unwrap_or_default();
            eprintln!("fake-credential-provider: cannot answer; the last token was {last}");
            return Ok(ExitCode::FAILURE);
        }
        "malformed" => {
            print!("this is not a CredentialProviderResponse");
            return Ok(ExitCode::SUCCESS);
        }
        "hang" => {
            eprintln!("fake-credential-provider: waiting for the token service");
            std::thread::sleep(std::time::Duration::from_secs(3600));
            return Ok(ExitCode::FAILURE);
        }
        "wrong-api-version" => (
            "credentialprovider.kubelet.k8s.io/v1alpha1".to_string(),
            "CredentialProviderResponse",
        ),
        "wrong-kind" => (api_version, "CredentialProviderRequest"),
        other => return Err(format!("unknown mode {other:?}")),
    };
    let registry = image.split('/').next().unwrap_or(image);
    let key = args.key.clone().unwrap_or_else(|| registry.to_string());
    let mut response = serde_json::json!({
        "apiVersion": api_version,
        "kind": kind,
        "cacheKeyType": "Registry",
        "auth": {},
    });
    if mode != "empty" {
        let counter = next_counter(&args.state_dir)?;
        let token = format!("fake-{counter:05}-{}", random_hex()?);
        if let Some(htpasswd) = &args.htpasswd {
            // The lowest cost bcrypt allows: these tokens live for seconds.
            let hash = bcrypt::hash(&token, 4).map_err(|e| format!("bcrypt: {e}"))?;
            write_atomically(htpasswd, &format!("{}:{hash}\n", args.username))?;
        }
        write_atomically(&args.state_dir.join("token"), &token)?;
        response["auth"][key] = serde_json::json!({"username": args.username, "password": token});
    }
    if let Some(duration) = args.cache_duration {
        response["cacheDuration"] = duration.into();
    }
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{response}").map_err(|e| format!("writing stdout: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

fn next_counter(dir: &Path) -> Result<u64, String> {
    let path = dir.join("counter");
    let current: u64 = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    write_atomically(&path, &(current + 1).to_string())?;
    Ok(current + 1)
}

/// Readers never see a half-written file.
fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text)
        .map_err(|e| format!("writing {}: {e}", temporary.display()))?;
    std::fs::rename(&temporary, path).map_err(|e| format!("renaming to {}: {e}", path.display()))
}

fn append(path: &Path, line: &str) -> Result<(), String> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    writeln!(file, "{line}").map_err(|e| format!("writing {}: {e}", path.display()))
}

fn random_hex() -> Result<String, String> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
