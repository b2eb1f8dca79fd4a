//! The standard `process_*` metrics (client_golang's names, which dashboards expect), read
//! from Linux's /proc at each scrape. Elsewhere, or when /proc cannot be read, the families
//! are left out rather than reported as zero.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// /proc reports CPU times in USER_HZ ticks, which the kernel fixes at 100 for user space.
const USER_HZ: f64 = 100.0;

/// One reading of /proc/self.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub resident_memory_bytes: Option<i64>,
    pub virtual_memory_bytes: Option<i64>,
    pub threads: Option<i64>,
    pub open_fds: Option<i64>,
    pub max_fds: Option<i64>,
    pub start_time_seconds: Option<f64>,
}

impl ProcessStats {
    pub fn read() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let mut stats = Self::default();
        if let Some(stat) = read("/proc/self/stat") {
            let boot_time = read("/proc/stat").and_then(|s| parse_boot_time(&s));
            stats.merge_stat(&stat, boot_time);
        }
        if let Some(status) = read("/proc/self/status") {
            stats.resident_memory_bytes = status_kib(&status, "VmRSS:").map(|k| k * 1024);
            stats.virtual_memory_bytes = status_kib(&status, "VmSize:").map(|k| k * 1024);
            stats.threads = status_kib(&status, "Threads:");
        }
        stats.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| entries.count() as i64);
        stats.max_fds = read("/proc/self/limits").and_then(|l| parse_max_open_files(&l));
        stats
    }

    /// utime and stime (fields 14 and 15 of /proc/self/stat) and starttime (22), counted
    /// after the command name, which may itself hold spaces and parentheses.
    fn merge_stat(&mut self, stat: &str, boot_time: Option<f64>) {
        let Some((_, after_name)) = stat.rsplit_once(')') else {
            return;
        };
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        if let (Some(user), Some(system)) = (field(14), field(15)) {
            self.cpu_seconds = Some((user + system) as f64 / USER_HZ);
        }
        if let (Some(start), Some(boot)) = (field(22), boot_time) {
            self.start_time_seconds = Some(boot + start as f64 / USER_HZ);
        }
    }
}

fn parse_boot_time(stat: &str) -> Option<f64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// `VmRSS:\t  1234 kB` -> 1234; `Threads:\t5` -> 5.
fn status_kib(status: &str, key: &str) -> Option<i64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The soft limit of `Max open files`; `unlimited` has no number to report.
fn parse_max_open_files(limits: &str) -> Option<i64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Registered on the registry's root, so the names carry no `pullsecret_injector_` prefix.
#[derive(Debug)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = ProcessStats::read();
        if let Some(seconds) = stats.cpu_seconds {
            let counter = ConstCounter::new(seconds);
            // Encoded as process_cpu_seconds_total.
            let metric = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                counter.metric_type(),
            )?;
            counter.encode(metric)?;
        }
        let gauges: [(&str, &str, Option<f64>); 6] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                stats.resident_memory_bytes.map(|v| v as f64),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                stats.virtual_memory_bytes.map(|v| v as f64),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                stats.open_fds.map(|v| v as f64),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                stats.max_fds.map(|v| v as f64),
            ),
            (
                "process_threads",
                "Number of OS threads in the process",
                stats.threads.map(|v| v as f64),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                stats.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            let Some(value) = value else { continue };
            let gauge = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_and_start_time_after_a_command_name_with_spaces_and_parentheses() {
        // A real line's shape: pid (comm) state ppid ... utime stime ... starttime ...
        let stat = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 9 0 1000 123456789 2048 18446744073709551615";
        let mut stats = ProcessStats::default();
        stats.merge_stat(stat, Some(1_700_000_000.0));
        assert_eq!(stats.cpu_seconds, Some(3.0));
        assert_eq!(stats.start_time_seconds, Some(1_700_000_010.0));
        let mut no_name = ProcessStats::default();
        no_name.merge_stat("garbage", None);
        assert_eq!(no_name, ProcessStats::default());
    }

    #[test]
    fn reads_status_limits_and_boot_time() {
        let status =
            "Name:\tpullsecret-inje\nVmSize:\t  102400 kB\nVmRSS:\t    8192 kB\nThreads:\t7\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(8192));
        assert_eq!(status_kib(status, "VmSize:"), Some(102_400));
        assert_eq!(status_kib(status, "Threads:"), Some(7));
        assert_eq!(status_kib(status, "VmSwap:"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1048576              1048576              files\n";
        assert_eq!(parse_max_open_files(limits), Some(1_048_576));
        assert_eq!(
            parse_max_open_files(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
        assert_eq!(
            parse_boot_time("cpu 1 2 3\nbtime 1700000000\n"),
            Some(1.7e9)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_cpu_memory_and_descriptors() {
        let stats = ProcessStats::read();
        assert!(stats.cpu_seconds.is_some_and(|s| s >= 0.0), "{stats:?}");
        assert!(
            stats.resident_memory_bytes.is_some_and(|b| b > 0),
            "{stats:?}"
        );
        assert!(stats.open_fds.is_some_and(|n| n >= 3), "{stats:?}");
        assert!(stats.max_fds.is_some_and(|n| n >= 3), "{stats:?}");
        let started = stats.start_time_seconds.expect("start time");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        assert!(
            started <= now + 1.0 && started > now - 86_400.0,
            "{started} vs {now}"
        );
    }
}
