//! Logging: `tracing` to stderr, as text for people or JSON for log pipelines, through a
//! bounded buffer that a thread of its own writes out. A log line costs the worker that
//! serves a request a copy into memory: never a write(2), never a wait on a slow log pipe.
//! When the pipe is so slow that the buffer fills, lines are dropped and counted
//! (`pullsecret_injector_log_lines_dropped_total`), and serving goes on.

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Lines waiting for the writer at most: about 10,000 admission lines, seconds of a busy
/// webhook's logging, so a pipe that stalls for a moment loses nothing.
pub const BUFFER_BYTES: usize = 4 << 20;
/// How long the writer lets lines gather once it has written: one write(2) for many lines.
const GATHER: Duration = Duration::from_millis(5);
/// A batch buffer larger than this is not kept for reuse, so a burst does not hold memory.
const KEEP_BYTES: usize = 256 << 10;

/// Lines dropped because the buffer was full, since the process started. Process-wide, like
/// the `tracing` subscriber that fills the buffer.
static DROPPED: AtomicU64 = AtomicU64::new(0);

pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Installs the subscriber. The filter: `level` (from `--log-level` or
/// `$PULLSECRET_INJECTOR_LOG_LEVEL`) when given, else `RUST_LOG`, else `info`; a flag always
/// wins over the environment. Keep the returned pipe until the end of `main`: dropping it
/// writes out what is buffered.
pub fn init(format: LogFormat, level: Option<&str>) -> LogPipe {
    let pipe = LogPipe::spawn(io::stderr(), BUFFER_BYTES);
    let filter = match level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    // Colours only for a person at a terminal: escape codes in a log file or a collector's
    // pipe are noise to read and to parse, and formatting them cost every line.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(io::stderr().is_terminal())
        .with_writer(pipe.writer());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    pipe
}

struct Buffer {
    lines: Vec<u8>,
    closing: bool,
}

struct Shared {
    buffer: Mutex<Buffer>,
    capacity: usize,
    wake: Condvar,
    /// The writer waits for a first line: the one who adds it wakes it. Otherwise lines are
    /// only appended, without a system call.
    asleep: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, line: &[u8]) {
        let mut buffer = self.lock();
        if buffer.lines.len() + line.len() > self.capacity {
            drop(buffer);
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        buffer.lines.extend_from_slice(line);
        drop(buffer);
        if self.asleep.swap(false, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }
}

/// The buffer and the thread that writes it out; dropping it writes out what is left.
pub struct LogPipe {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LogPipe {
    /// Lines go to `out` from a thread named `log-writer`.
    pub fn spawn(out: impl Write + Send + 'static, capacity: usize) -> Self {
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer {
                lines: Vec::new(),
                closing: false,
            }),
            capacity,
            wake: Condvar::new(),
            asleep: AtomicBool::new(false),
        });
        let writer = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_out(&writer, out))
            .ok();
        Self { shared, thread }
    }

    /// What `tracing_subscriber::fmt` writes each line with.
    pub fn writer(&self) -> PipeWriter {
        PipeWriter {
            shared: Arc::clone(&self.shared),
            direct: self.thread.is_none(),
        }
    }
}

impl Drop for LogPipe {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: waits for lines, writes what has gathered, until the pipe closes.
fn write_out(shared: &Shared, mut out: impl Write) {
    let mut spare = Vec::new();
    loop {
        let (batch, closing) = {
            let mut buffer = shared.lock();
            if buffer.lines.is_empty() && !buffer.closing {
                shared.asleep.store(true, Ordering::Release);
                buffer = shared
                    .wake
                    .wait_while(buffer, |b| b.lines.is_empty() && !b.closing)
                    .unwrap_or_else(|e| e.into_inner());
            }
            (
                std::mem::replace(&mut buffer.lines, std::mem::take(&mut spare)),
                buffer.closing,
            )
        };
        if !batch.is_empty() {
            // Nowhere to report a failed write to: the line is lost, as with stderr itself.
            let _ = out.write_all(&batch).and_then(|()| out.flush());
        }
        if closing && batch.is_empty() {
            return;
        }
        if batch.capacity() <= KEEP_BYTES {
            spare = batch;
            spare.clear();
        }
        if !closing {
            std::thread::sleep(GATHER);
        }
    }
}

/// Appends each line to the pipe's buffer (or, if its thread could not start, writes it to
/// stderr directly).
pub struct PipeWriter {
    shared: Arc<Shared>,
    direct: bool,
}

impl<'a> MakeWriter<'a> for PipeWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { pipe: self }
    }
}

/// One log line: `tracing_subscriber::fmt` formats it, then writes it whole, once.
pub struct LineWriter<'a> {
    pipe: &'a PipeWriter,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        if self.pipe.direct {
            return io::stderr().write(line);
        }
        self.pipe.shared.push(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log destination that can be made to hang, like a pipe nobody reads.
    #[derive(Clone, Default)]
    struct Sink {
        written: Arc<Mutex<Vec<u8>>>,
        writes: Arc<AtomicU64>,
        stalled: Arc<Mutex<()>>,
    }

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let _stall = self.stalled.lock().unwrap();
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.written.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn line(writer: &PipeWriter, text: &str) {
        writer.make_writer().write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn lines_come_out_whole_in_order_and_many_per_write() {
        let sink = Sink::default();
        let pipe = LogPipe::spawn(sink.clone(), 1 << 20);
        let writer = pipe.writer();
        for i in 0..1000 {
            line(&writer, &format!("line {i}\n"));
        }
        drop(pipe);
        let written = String::from_utf8(sink.written.lock().unwrap().clone()).unwrap();
        let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(written, expected);
        assert!(
            sink.writes.load(Ordering::Relaxed) < 100,
            "{} writes for 1000 lines",
            sink.writes.load(Ordering::Relaxed)
        );
    }

    #[test]
    fn a_stalled_destination_never_blocks_the_logger_and_drops_are_counted() {
        let sink = Sink::default();
        let stall = sink.stalled.lock().unwrap();
        let pipe = LogPipe::spawn(sink.clone(), 1000);
        let writer = pipe.writer();
        // The writer takes the first line and hangs on the destination. Waited for, not
        // slept on: a writer thread scheduled late would leave the line in the buffer.
        line(&writer, "first\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !pipe.shared.lock().lines.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer never took the first line"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let dropped_before = dropped_lines();
        let started = std::time::Instant::now();
        for _ in 0..200 {
            line(&writer, &format!("{:>99}\n", "x"));
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "logging waited for the stalled destination"
        );
        // 10 lines of 100 bytes fill the buffer; the other 190 are dropped and counted.
        assert!(dropped_lines() - dropped_before >= 190);
        drop(stall);
        drop(pipe);
        let written = sink.written.lock().unwrap().clone();
        assert_eq!(written.len(), "first\n".len() + 10 * 100);
    }
}
