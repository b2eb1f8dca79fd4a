//! Running a credential provider plugin as the kubelet runs it: `<binDir>/<name> args…` with
//! the provider's `env` over our own environment, a CredentialProviderRequest on stdin, the
//! response read from stdout, all within a timeout. A plugin that fails, hangs or answers
//! badly is reported with its name and the last line of its stderr, with any credential it
//! printed there redacted; its stdout is never shown.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::kubelet::{self, EnvVar, Issued, ResponseError};

/// A response larger than this is not credentials: the plugin is stopped and refused.
const MAX_STDOUT_BYTES: usize = 1024 * 1024;
/// Only the end of stderr is kept: its last line is what is reported.
const MAX_STDERR_BYTES: usize = 64 * 1024;
/// The stderr line shown in logs and Events, at most.
const MAX_STDERR_LINE_CHARS: usize = 300;
/// Runs of stdout this long that also appear on stderr are redacted: credentials are long.
const MIN_SECRET_CHARS: usize = 8;

/// A provider's plugin, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Plugin {
    pub name: String,
    pub executable: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<EnvVar>,
    pub api_version: String,
    pub default_cache_duration: Duration,
}

#[derive(Debug, Error)]
pub enum PluginError {
    #[error("credential provider plugin {plugin} could not be started ({executable}): {reason}")]
    Spawn {
        plugin: String,
        executable: String,
        reason: String,
    },
    #[error(
        "credential provider plugin {plugin} did not answer for image {image} within {} s and was killed{}",
        .after.as_secs(), stderr_suffix(.stderr)
    )]
    Timeout {
        plugin: String,
        image: String,
        after: Duration,
        stderr: Option<String>,
    },
    #[error(
        "credential provider plugin {plugin} failed for image {image}: {status}{}",
        stderr_suffix(.stderr)
    )]
    Exit {
        plugin: String,
        image: String,
        status: String,
        stderr: Option<String>,
    },
    #[error(
        "credential provider plugin {plugin} wrote more than {MAX_STDOUT_BYTES} bytes for image {image} and was stopped{}",
        stderr_suffix(.stderr)
    )]
    OutputTooLarge {
        plugin: String,
        image: String,
        stderr: Option<String>,
    },
    #[error(
        "credential provider plugin {plugin}'s answer for image {image} is refused: {error}{}",
        stderr_suffix(.stderr)
    )]
    Refused {
        plugin: String,
        image: String,
        error: ResponseError,
        stderr: Option<String>,
    },
}

fn stderr_suffix(stderr: &Option<String>) -> String {
    stderr
        .as_ref()
        .map(|line| format!("; stderr: {line:?}"))
        .unwrap_or_default()
}

impl PluginError {
    /// The `reason` label of the failure metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Spawn { .. } => "spawn",
            Self::Timeout { .. } => "timeout",
            Self::Exit { .. } => "exit",
            Self::OutputTooLarge { .. } => "output_too_large",
            Self::Refused { error, .. } => error.metric_label(),
        }
    }

    /// The last line the plugin wrote on stderr, redacted, if any.
    pub fn stderr(&self) -> Option<&str> {
        match self {
            Self::Spawn { .. } => None,
            Self::Timeout { stderr, .. }
            | Self::Exit { stderr, .. }
            | Self::OutputTooLarge { stderr, .. }
            | Self::Refused { stderr, .. } => stderr.as_deref(),
        }
    }
}

impl Plugin {
    /// Asks the plugin for each image in turn and merges the answers: the first answer for a
    /// registry key wins (as the kubelet prefers an earlier provider's), and the credentials
    /// are as valid as the shortest-lived of them. `known` are credentials of earlier runs,
    /// redacted wherever they show up on stderr.
    pub async fn fetch(
        &self,
        images: &[String],
        timeout: Duration,
        known: &[String],
    ) -> Result<Issued, PluginError> {
        let mut auths = BTreeMap::new();
        let mut valid_for: Option<Duration> = None;
        for image in images {
            let issued = self.run(image, timeout, known).await?;
            valid_for = Some(valid_for.map_or(issued.valid_for, |d| d.min(issued.valid_for)));
            for (key, auth) in issued.auths {
                auths.entry(key).or_insert(auth);
            }
        }
        Ok(Issued {
            auths,
            valid_for: valid_for.unwrap_or(self.default_cache_duration),
        })
    }

    /// One request for `image`.
    pub async fn run(
        &self,
        image: &str,
        timeout: Duration,
        known: &[String],
    ) -> Result<Issued, PluginError> {
        let mut child = Command::new(&self.executable)
            .args(&self.args)
            .envs(self.env.iter().map(|v| (&v.name, &v.value)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| PluginError::Spawn {
                plugin: self.name.clone(),
                executable: self.executable.display().to_string(),
                reason: e.to_string(),
            })?;
        let request = kubelet::request(&self.api_version, image);
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        // Shared with the exchange so that a plugin killed at the timeout is still reported
        // with what it wrote.
        let stderr_tail = std::sync::Mutex::new(Vec::new());
        let exchange = async {
            // A plugin may exit without reading its input: a broken pipe is its business.
            let write = async {
                if let Some(mut stdin) = stdin {
                    let _ = stdin.write_all(&request).await;
                    let _ = stdin.shutdown().await;
                }
            };
            let (_, out, (), status) = tokio::join!(
                write,
                read_bounded(stdout, MAX_STDOUT_BYTES),
                read_tail(stderr, MAX_STDERR_BYTES, &stderr_tail),
                child.wait(),
            );
            (out, status)
        };
        let outcome = tokio::time::timeout(timeout, exchange).await;
        let err = stderr_tail
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Ok((out, status)) = outcome else {
            // kill_on_drop would kill it too; waiting here reaps it at once.
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(PluginError::Timeout {
                plugin: self.name.clone(),
                image: image.to_string(),
                after: timeout,
                stderr: last_line(&err, &secrets_in(&[], known)),
            });
        };
        let (stdout, overflowed) = out;
        let stderr = last_line(&err, &secrets_in(&stdout, known));
        if overflowed {
            return Err(PluginError::OutputTooLarge {
                plugin: self.name.clone(),
                image: image.to_string(),
                stderr,
            });
        }
        match status {
            Ok(status) if status.success() => {}
            Ok(status) => {
                return Err(PluginError::Exit {
                    plugin: self.name.clone(),
                    image: image.to_string(),
                    status: status.to_string(),
                    stderr,
                });
            }
            Err(e) => {
                return Err(PluginError::Exit {
                    plugin: self.name.clone(),
                    image: image.to_string(),
                    status: format!("cannot be waited for: {e}"),
                    stderr,
                });
            }
        }
        kubelet::parse_response(&stdout, &self.api_version, self.default_cache_duration).map_err(
            |error| PluginError::Refused {
                plugin: self.name.clone(),
                image: image.to_string(),
                error,
                stderr,
            },
        )
    }
}

/// Reads at most `limit` bytes; the flag says there was more (the rest is not read).
async fn read_bounded(pipe: Option<impl AsyncRead + Unpin>, limit: usize) -> (Vec<u8>, bool) {
    let Some(pipe) = pipe else {
        return (Vec::new(), false);
    };
    let mut out = Vec::new();
    let mut limited = pipe.take(limit as u64 + 1);
    let _ = limited.read_to_end(&mut out).await;
    let overflowed = out.len() > limit;
    out.truncate(limit);
    (out, overflowed)
}

/// Reads everything into `tail`, keeping only the last `keep` bytes.
async fn read_tail(
    pipe: Option<impl AsyncRead + Unpin>,
    keep: usize,
    tail: &std::sync::Mutex<Vec<u8>>,
) {
    let Some(mut pipe) = pipe else {
        return;
    };
    let mut buffer = [0u8; 8192];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut tail = tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                tail.extend_from_slice(&buffer[..n]);
                if tail.len() > keep {
                    let excess = tail.len() - keep;
                    tail.drain(..excess);
                }
            }
        }
    }
}

/// What must not be shown if the plugin echoes it on stderr: the credentials of earlier
/// runs, and this run's credentials, which are the strings of the response's `auth` (or,
/// when stdout is not JSON, every long token-like run in it).
fn secrets_in(stdout: &[u8], known: &[String]) -> Vec<String> {
    let mut secrets: Vec<String> = known
        .iter()
        .filter(|s| s.len() >= MIN_SECRET_CHARS)
        .cloned()
        .collect();
    match serde_json::from_slice::<serde_json::Value>(stdout) {
        Ok(json) => collect_strings(&json["auth"], &mut secrets),
        Err(_) => secrets.extend(
            String::from_utf8_lossy(stdout)
                .split(|c: char| c.is_whitespace() || matches!(c, '"' | ',' | '{' | '}'))
                .filter(|run| run.len() >= MIN_SECRET_CHARS)
                .map(str::to_string),
        ),
    }
    // Longest first, so that a secret containing another is redacted whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets
}

fn collect_strings(value: &serde_json::Value, into: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) if s.len() >= MIN_SECRET_CHARS => into.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_strings(v, into)),
        serde_json::Value::Object(map) => map.values().for_each(|v| collect_strings(v, into)),
        _ => {}
    }
}

/// The last non-blank line of `stderr`, with `secrets` redacted, shortened for a log line.
fn last_line(stderr: &[u8], secrets: &[String]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    let mut line = line.to_string();
    for secret in secrets {
        if line.contains(secret.as_str()) {
            line = line.replace(secret.as_str(), "<redacted>");
        }
    }
    // Shortened after redaction, so that a cut cannot split a secret and hide it from it.
    if line.chars().count() > MAX_STDERR_LINE_CHARS {
        line = line.chars().take(MAX_STDERR_LINE_CHARS).collect::<String>() + "…";
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const V1: &str = "credentialprovider.kubelet.k8s.io/v1";

    /// A plugin written as a shell script: the process, pipes and exit codes are real.
    fn script(dir: &std::path::Path, name: &str, body: &str) -> Plugin {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Plugin {
            name: name.to_string(),
            executable: path,
            args: vec!["--flag".into()],
            env: vec![EnvVar {
                name: "PLUGIN_USER".into(),
                value: "robot".into(),
            }],
            api_version: V1.into(),
            default_cache_duration: Duration::from_secs(60),
        }
    }

    fn answer(auth: &str) -> String {
        format!(
            r#"printf '{{"apiVersion":"{V1}","kind":"CredentialProviderResponse","cacheKeyType":"Registry","cacheDuration":"5s","auth":{auth}}}'"#
        )
    }

    const SECOND: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn the_plugin_gets_the_request_args_and_env_and_its_answer_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let seen = dir.path().join("seen");
        let plugin = script(
            dir.path(),
            "echoing",
            &format!(
                "cat > {seen}.stdin\necho \"$1 $PLUGIN_USER\" > {seen}.args\n{}",
                answer(r#"{"r.io":{"username":"u","password":"p"}}"#),
                seen = seen.display()
            ),
        );
        let issued = plugin.run("r.io/app:1", SECOND, &[]).await.unwrap();
        assert_eq!(issued.valid_for, Duration::from_secs(5));
        assert_eq!(issued.auths["r.io"].password, "p");
        let request: serde_json::Value =
            serde_json::from_slice(&std::fs::read(seen.with_extension("stdin")).unwrap()).unwrap();
        assert_eq!(request["image"], "r.io/app:1");
        assert_eq!(request["apiVersion"], V1);
        assert_eq!(
            std::fs::read_to_string(seen.with_extension("args")).unwrap(),
            "--flag robot\n"
        );
    }

    #[tokio::test]
    async fn a_failing_plugin_is_reported_with_its_exit_status_and_last_stderr_line() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(
            dir.path(),
            "failing",
            "echo 'starting' >&2\necho 'AccessDenied: not authorized to GetAuthorizationToken' >&2\necho >&2\nexit 3",
        );
        let error = plugin.run("r.io/app", SECOND, &[]).await.unwrap_err();
        assert_eq!(error.metric_label(), "exit");
        assert_eq!(
            error.stderr(),
            Some("AccessDenied: not authorized to GetAuthorizationToken")
        );
        let text = error.to_string();
        assert!(
            text.contains("plugin failing failed for image r.io/app"),
            "{text}"
        );
        assert!(text.contains("exit status: 3"), "{text}");
    }

    #[tokio::test]
    async fn a_hanging_plugin_is_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(
            dir.path(),
            "hanging",
            "echo 'waiting for the metadata service' >&2\nexec sleep 30",
        );
        let started = std::time::Instant::now();
        let error = plugin
            .run("r.io/app", Duration::from_millis(300), &[])
            .await
            .unwrap_err();
        assert_eq!(error.metric_label(), "timeout");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(error.to_string().contains("did not answer"), "{error}");
        assert_eq!(error.stderr(), Some("waiting for the metadata service"));
    }

    #[tokio::test]
    async fn a_missing_executable_is_a_spawn_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut plugin = script(dir.path(), "there", "exit 0");
        plugin.executable = dir.path().join("absent");
        let error = plugin.run("r.io/app", SECOND, &[]).await.unwrap_err();
        assert_eq!(error.metric_label(), "spawn");
        assert!(error.to_string().contains("absent"), "{error}");
    }

    #[tokio::test]
    async fn bad_output_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(
            dir.path(),
            "wrong-version",
            r#"printf '{"apiVersion":"credentialprovider.kubelet.k8s.io/v1beta1","kind":"CredentialProviderResponse","cacheKeyType":"Image","auth":{"r.io":{"password":"p"}}}'"#,
        );
        let error = plugin.run("r.io/app", SECOND, &[]).await.unwrap_err();
        assert_eq!(error.metric_label(), "wrong_api_version");
        assert!(error.to_string().contains("is refused"), "{error}");
        let flood = script(dir.path(), "flood", "head -c 2000000 /dev/zero");
        let error = flood.run("r.io/app", SECOND, &[]).await.unwrap_err();
        assert_eq!(error.metric_label(), "output_too_large");
    }

    #[tokio::test]
    async fn credentials_on_stderr_are_redacted() {
        let dir = tempfile::tempdir().unwrap();
        // Echoes this run's password, and an older one the caller knows, then fails to answer.
        let plugin = script(
            dir.path(),
            "leaky",
            &format!(
                "echo 'debug: token=fresh-token-1234 old=older-token-99' >&2\n{}",
                answer(r#"{"r.io":{"username":"u","password":"fresh-token-1234"}}"#)
                    .replace("Registry", "Bogus")
            ),
        );
        let error = plugin
            .run("r.io/app", SECOND, &["older-token-99".to_string()])
            .await
            .unwrap_err();
        let line = error.stderr().unwrap();
        assert_eq!(line, "debug: token=<redacted> old=<redacted>");
        assert!(!error.to_string().contains("token-"), "{error}");
        // Not JSON: long runs of stdout are redacted.
        let plugin = script(
            dir.path(),
            "garbled",
            "echo 'password: s3cr3t-value-xyz' \necho 'parse s3cr3t-value-xyz failed' >&2",
        );
        let error = plugin.run("r.io/app", SECOND, &[]).await.unwrap_err();
        assert_eq!(error.metric_label(), "malformed");
        assert_eq!(error.stderr(), Some("parse <redacted> failed"));
    }

    #[tokio::test]
    async fn answers_for_several_images_merge_first_key_first_and_shortest_duration() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(
            dir.path(),
            "per-image",
            &format!(
                r#"if grep -q a.io; then {}; else {}; fi"#,
                answer(r#"{"a.io":{"username":"u","password":"first"},"shared.io":{"username":"u","password":"from-a"}}"#),
                answer(r#"{"b.io":{"username":"u","password":"second"},"shared.io":{"username":"u","password":"from-b"}}"#)
                    .replace("5s", "3s"),
            ),
        );
        let issued = plugin
            .fetch(&["a.io/x".into(), "b.io/y".into()], SECOND, &[])
            .await
            .unwrap();
        assert_eq!(
            issued.auths.keys().collect::<Vec<_>>(),
            ["a.io", "b.io", "shared.io"]
        );
        assert_eq!(issued.auths["shared.io"].password, "from-a");
        assert_eq!(issued.valid_for, Duration::from_secs(3));
    }
}
