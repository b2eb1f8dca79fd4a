//! Logs printed when a test fails: a guard that, dropped during a panic, writes the logs of
//! what it watches to stderr, which the test harness shows with the failing test's output.

/// See the module documentation. Made by [`crate::controlplane::ControlPlane::logs_on_failure`]
/// and [`crate::injector::Injector::logs_on_failure`].
pub struct LogsOnFailure<'a> {
    what: String,
    logs: Box<dyn Fn() -> String + Send + Sync + 'a>,
}

impl<'a> LogsOnFailure<'a> {
    /// `what` names the source in the header (`==== <what> logs ====`); `logs` reads them
    /// when needed, so the guard shows what was logged up to the failure.
    pub fn new(what: &str, logs: impl Fn() -> String + Send + Sync + 'a) -> Self {
        Self {
            what: what.to_string(),
            logs: Box::new(logs),
        }
    }

    /// Adds a name to the header, for tests that run several of the same kind.
    pub fn named(mut self, name: &str) -> Self {
        self.what = format!("{} {name}", self.what);
        self
    }
}

impl Drop for LogsOnFailure<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("==== {} logs ====\n{}", self.what, (self.logs)());
        }
    }
}
