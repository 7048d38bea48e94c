//! Running lora-validate as a user would and measuring it: wall time around spawn → reap, CPU time and peak RSS
//! from `wait4`'s rusage, and — sampled every 50 ms from /proc while it runs — the peaks of its file-backed pages
//! (the memory-mapped model) and of its anonymous memory (KV caches, compute and logit buffers), to show that the
//! model is mapped once for both contexts.
#![allow(unsafe_code)] // wait4 has no safe std wrapper

use std::fs::File;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One measured run.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub wall: Duration,
    /// User + system CPU time of the child.
    pub cpu: Duration,
    /// Peak RSS in bytes (ru_maxrss).
    pub max_rss: u64,
    /// Largest sampled RssFile in bytes.
    pub max_rss_file: u64,
    /// Largest sampled RssAnon in bytes.
    pub max_rss_anon: u64,
}

/// RssFile and RssAnon of a live process, in bytes.
fn rss_split(pid: libc::pid_t) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field("RssFile:")?, field("RssAnon:")?))
}

/// Spawn `cmd` (stdout discarded, stderr to `stderr_log`), sample its memory until it exits, reap it with `wait4`;
/// exit status 0 (gate passed) and 1 (gate failed) are results, anything else an error.
pub fn run(cmd: &mut Command, stderr_log: &std::path::Path) -> Result<Sample, String> {
    let log = File::create(stderr_log).map_err(|e| format!("{}: {e}", stderr_log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    let start = Instant::now();
    let child = cmd.spawn().map_err(|e| format!("spawning {cmd:?}: {e}"))?;
    let pid = child.id() as libc::pid_t;
    let (mut max_file, mut max_anon) = (0u64, 0u64);
    let mut status: libc::c_int = 0;
    // SAFETY: a zeroed rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        if let Some((file, anon)) = rss_split(pid) {
            max_file = max_file.max(file);
            max_anon = max_anon.max(anon);
        }
        // SAFETY: `pid` is our own un-reaped child (std's `Child` never waits unless asked, and we do not ask);
        // both out-parameters are valid for writes.
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if reaped == pid {
            break;
        }
        if reaped != 0 {
            return Err(format!(
                "wait4 on {cmd:?}: {}",
                std::io::Error::last_os_error()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let wall = start.elapsed();
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    if !matches!(code, Some(0 | 1)) {
        let stderr = std::fs::read_to_string(stderr_log).unwrap_or_default();
        return Err(format!(
            "{cmd:?} failed (wait status {status:#x}):\n{stderr}"
        ));
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    Ok(Sample {
        wall,
        cpu: time(usage.ru_utime) + time(usage.ru_stime),
        // Linux reports ru_maxrss in KiB.
        max_rss: u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
        max_rss_file: max_file,
        max_rss_anon: max_anon,
    })
}
