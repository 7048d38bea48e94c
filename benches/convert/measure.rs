//! Running a command as a user would and measuring it: wall time around spawn → reap, and the child's own peak
//! resident set from `wait4`'s rusage (`ru_maxrss`: anonymous and file-backed pages it had mapped, at the
//! high-water mark). Page-cache control for the cold runs: `posix_fadvise(POSIX_FADV_DONTNEED)` on one file drops
//! its clean cached pages (and nothing else on a machine shared with others).
#![allow(unsafe_code)] // wait4 and posix_fadvise have no safe std wrapper

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One measured run.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub wall: Duration,
    /// User + system CPU time of the child.
    pub cpu: Duration,
    /// Peak RSS in bytes.
    pub max_rss: u64,
}

/// Spawn `cmd` (stdout discarded, stderr to `stderr_log`), reap it with `wait4`, and fail on a non-zero exit.
pub fn run(cmd: &mut Command, stderr_log: &Path) -> Result<Sample, String> {
    run_sampled(cmd, stderr_log, &[0], None)
}

/// How often a sampler passed to [`run_sampled`] looks at the running child.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// [`run`], with the exit codes in `accept` taken as results rather than failures, and — when `sampler` is given —
/// `sampler(pid)` called every [`SAMPLE_EVERY`] while the child runs. Without a sampler the child is reaped with a
/// blocking `wait4`, so the wall time has no polling slack.
pub fn run_sampled(
    cmd: &mut Command,
    stderr_log: &Path,
    accept: &[i32],
    mut sampler: Option<&mut dyn FnMut(libc::pid_t)>,
) -> Result<Sample, String> {
    let log = File::create(stderr_log).map_err(|e| format!("{}: {e}", stderr_log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    let start = Instant::now();
    let child = cmd.spawn().map_err(|e| format!("spawning {cmd:?}: {e}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: a zeroed rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let flags = if sampler.is_some() { libc::WNOHANG } else { 0 };
    loop {
        if let Some(sample) = sampler.as_mut() {
            sample(pid);
        }
        // SAFETY: `pid` is our own un-reaped child (std's `Child` never waits unless asked, and we do not ask);
        // both out-parameters are valid for writes.
        let reaped = unsafe { libc::wait4(pid, &mut status, flags, &mut usage) };
        if reaped == pid {
            break;
        }
        if reaped != 0 {
            return Err(format!(
                "wait4 on {cmd:?}: {}",
                std::io::Error::last_os_error()
            ));
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
    let wall = start.elapsed();
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    if !code.is_some_and(|c| accept.contains(&c)) {
        let stderr = std::fs::read_to_string(stderr_log).unwrap_or_default();
        return Err(format!(
            "{cmd:?} failed (wait status {status:#x}):\n{stderr}"
        ));
    }
    // Linux reports ru_maxrss in KiB.
    let max_rss = u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024;
    let time = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    let cpu = time(usage.ru_utime) + time(usage.ru_stime);
    Ok(Sample { wall, cpu, max_rss })
}

/// Write back `path`'s dirty pages, then drop all its cached pages.
pub fn drop_cache(path: &Path) -> std::io::Result<()> {
    let file = File::open(path)?;
    file.sync_all()?;
    // SAFETY: a valid open descriptor; offset 0, length 0 means the whole file.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Read `path` once so its pages are in the page cache.
pub fn warm_cache(path: &Path) -> std::io::Result<()> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    while file.read(&mut buf)? > 0 {}
    Ok(())
}

/// Remove `path` (if present) and make sure the freed blocks do not linger as writeback work.
pub fn remove(path: &Path) {
    if path.exists() {
        let _ = File::open(path).and_then(|f| f.sync_all());
        let _ = std::fs::remove_file(path);
    }
}

/// Minimum and median.
pub fn min_median(samples: &[Duration]) -> (Duration, Duration) {
    let mut s = samples.to_vec();
    s.sort();
    let min = s.first().copied().unwrap_or_default();
    let median = if s.is_empty() {
        Duration::ZERO
    } else if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2
    };
    (min, median)
}

/// The 1-, 5- and 15-minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// The CPU model from /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// MemTotal from /proc/meminfo, in GiB.
pub fn mem_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("MemTotal")).map(|l| {
                let kb: f64 = l
                    .split_whitespace()
                    .nth(1)
                    .and_then(|x| x.parse().ok())
                    .unwrap_or(0.0);
                format!("{:.1} GiB", kb / (1u64 << 20) as f64)
            })
        })
        .unwrap_or_else(|| "unknown".into())
}
