//! CPU and memory readings of this process and of the relay (`--server-pid`), so every
//! summary shows whether the generator or the server was the bottleneck.

use crate::clock::now_ns;

/// CPU time (user + system) this process has used, in nanoseconds.
fn own_cpu_ns() -> u64 {
    // SAFETY: getrusage fills the zeroed struct it is given and reads nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time (utime + stime, all threads) of another process, from /proc/PID/stat, in
/// nanoseconds; clock ticks underneath (10 ms each, usually), so over a 10 s phase the
/// error is a fraction of a percent of a busy server.
fn process_cpu_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; count fields after its closing ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no memory arguments.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some((utime + stime) * 1_000_000_000 / ticks)
}

/// CPU time all processes have used (user, nice, system, irq, softirq, steal), from the
/// first line of /proc/stat, in nanoseconds: what the loadgen and the relay did not use of
/// it was used by something else on the machine.
fn machine_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| ticks.get(i).copied().unwrap_or(0))
        .sum::<u64>();
    // SAFETY: sysconf has no memory arguments.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(busy * 1_000_000_000 / hz)
}

/// Resident set size of a process in KiB (VmRSS in /proc/PID/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[derive(Clone, Copy)]
pub struct CpuSample {
    at: u64,
    own: u64,
    server: Option<u64>,
    machine: Option<u64>,
}

impl CpuSample {
    pub fn take(server_pid: Option<u32>) -> CpuSample {
        CpuSample {
            at: now_ns(),
            own: own_cpu_ns(),
            server: server_pid.and_then(process_cpu_ns),
            machine: machine_cpu_ns(),
        }
    }

    /// CPU used between `self` and `later`, in cores (1.0 = one core busy all the time).
    pub fn until(&self, later: &CpuSample) -> CpuUse {
        let wall = later.at.saturating_sub(self.at).max(1) as f64;
        let cores = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / wall),
            _ => None,
        };
        CpuUse {
            loadgen: later.own.saturating_sub(self.own) as f64 / wall,
            server: cores(self.server, later.server),
            server_s: match (self.server, later.server) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1e9),
                _ => None,
            },
            machine: cores(self.machine, later.machine),
        }
    }
}

#[derive(Clone, Copy, Default)]
pub struct CpuUse {
    pub loadgen: f64,
    pub server: Option<f64>,
    /// The server's CPU time over the same interval, in seconds (what the summary divides
    /// by the messages or deliveries counted).
    pub server_s: Option<f64>,
    /// Every process on the machine, the two above included.
    pub machine: Option<f64>,
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
