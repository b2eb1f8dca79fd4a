//! The kubelet keyring oracle (tests/oracle, built by `make oracle`) as one long-lived process
//! speaking JSON lines: requests go out from a writer thread, so neither side can block the
//! other on a full pipe, and answers come back in order.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use k8s_openapi::ByteString;
use serde::{Deserialize, Serialize};

/// One pod's worth of question: its pull secrets (`.dockerconfigjson` bytes, in order) and
/// images.
#[derive(Serialize)]
pub struct Request {
    pub id: u64,
    pub secrets: Vec<ByteString>,
    pub images: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    pub id: u64,
    /// `MakeDockerKeyring` refused the secrets: the kubelet pulls nothing with them.
    #[serde(default)]
    pub keyring_error: Option<String>,
    pub images: Vec<ImageAnswer>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageAnswer {
    /// `reference.ParseNormalizedNamed(image).Name()`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    /// What the kubelet looks up (`parsers.ParseImageName`, as `EnsureImageExists` calls it).
    #[serde(default)]
    pub repo_to_pull: Option<String>,
    /// The usernames of the credentials `Lookup` returns, in its order.
    pub used: Vec<String>,
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/oracle/bin/kubelet-keyring-oracle")
}

pub struct Oracle {
    child: Child,
    requests: Option<SyncSender<String>>,
    writer: Option<JoinHandle<()>>,
    answers: BufReader<ChildStdout>,
}

impl Oracle {
    pub fn start() -> Self {
        let path = binary();
        assert!(
            path.is_file(),
            "{} is missing: build it once with `make oracle` (tests/oracle/build.sh, needs Go)",
            path.display()
        );
        let mut child = Command::new(&path)
            // One core for the oracle, one for this side.
            .env("GOMAXPROCS", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", path.display()));
        let mut stdin = child.stdin.take().expect("oracle stdin");
        let answers = BufReader::new(child.stdout.take().expect("oracle stdout"));
        let (requests, lines) = sync_channel::<String>(256);
        let writer = std::thread::spawn(move || {
            for line in lines {
                if stdin.write_all(line.as_bytes()).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            requests: Some(requests),
            writer: Some(writer),
            answers,
        }
    }

    pub fn send(&self, request: &Request) {
        let mut line = serde_json::to_string(request).expect("request serializes");
        line.push('\n');
        self.requests
            .as_ref()
            .expect("oracle open")
            .send(line)
            .expect("oracle writer alive");
    }

    pub fn receive(&mut self, id: u64) -> Answer {
        let mut line = String::new();
        let read = self
            .answers
            .read_line(&mut line)
            .expect("read oracle answer");
        assert!(read > 0, "the oracle exited before answering request {id}");
        let answer: Answer = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("oracle answer {line:?} does not parse: {e}"));
        assert_eq!(answer.id, id, "oracle answers out of order");
        answer
    }
}

impl Drop for Oracle {
    fn drop(&mut self) {
        // Every answer has been read on the normal path; after a failed assertion the oracle
        // may be blocked writing answers nobody reads, so it is stopped rather than awaited.
        self.requests.take();
        let _ = self.child.kill();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        let _ = self.child.wait();
    }
}
