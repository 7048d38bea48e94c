//! Running lora-validate as a user would and measuring it: wall time around spawn → reap, CPU time and peak RSS
//! from `wait4`'s rusage, and — sampled every 50 ms from /proc while it runs — the peaks of its file-backed pages
//! (the memory-mapped model) and of its anonymous memory (KV caches, compute and logit buffers), to show that the
//! model is mapped once for both contexts. Spawning and reaping are the converter benchmark's
//! ([`measure::run_sampled`]).

use std::process::Command;
use std::time::Duration;

use crate::measure;

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
    let (mut max_file, mut max_anon) = (0u64, 0u64);
    let mut sample = |pid| {
        if let Some((file, anon)) = rss_split(pid) {
            max_file = max_file.max(file);
            max_anon = max_anon.max(anon);
        }
    };
    let s = measure::run_sampled(cmd, stderr_log, &[0, 1], Some(&mut sample))?;
    Ok(Sample {
        wall: s.wall,
        cpu: s.cpu,
        max_rss: s.max_rss,
        max_rss_file: max_file,
        max_rss_anon: max_anon,
    })
}
