//! Where each shard's executor runs, and why one could not start.
//!
//! Pinned shards ([`super::ShardPlacement::Pinned`]): shard *i* runs on the *i*-th CPU of
//! the set the process may run on (sched_getaffinity(2)), modulo its size: a CPU set that
//! leaves out CPU 0 (`docker --cpuset-cpus=1`, systemd's `CPUAffinity=`, a cgroup cpuset)
//! is used as it is, never asked for CPUs outside it. Floating shards inherit that set.
//!
//! An executor that cannot start is explained by probing the usual causes in turn
//! (io_uring missing or blocked, too little locked memory) rather than by guessing; what
//! none of them explains is reported as glommio said it.

use std::io;

/// The CPUs this process may run on, in ascending order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: sched_getaffinity(2) writes at most `size_of::<cpu_set_t>()` bytes into the
    // zeroed set we pass; CPU_ISSET only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect();
        if cpus.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the process may run on no CPU",
            ));
        }
        Ok(cpus)
    }
}

/// The CPU shard `shard` is pinned to, among `allowed` (non-empty, see [`allowed_cpus`]).
pub fn cpu_for(shard: usize, allowed: &[usize]) -> usize {
    allowed[shard % allowed.len()]
}

/// Why the executor of shard `shard` (pinned to `cpu`, if it is) failed with `error`: the
/// first cause the probes find, else glommio's error as it is.
pub fn explain(shard: usize, cpu: Option<usize>, error: &str) -> String {
    let place = cpu.map_or(String::new(), |cpu| format!(" on CPU {cpu}"));
    let mut msg = format!("cannot start a shard executor (shard {shard}{place}): {error}.");
    match probe_io_uring() {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => msg.push_str(
            " This kernel has no io_uring (io_uring_setup: ENOSYS); Pulsar Relay needs Linux >= 5.8.",
        ),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            msg.push_str(&format!(
                " io_uring is not allowed here (io_uring_setup: {e}), and Pulsar Relay needs it. \
                 Containers using Docker's default seccomp profile block it (use \
                 tools/deploy/seccomp-io_uring.json); check also that kernel.io_uring_disabled is 0"
            ));
            match io_uring_disabled() {
                Some(setting) if setting != "0" => {
                    msg.push_str(&format!(" (it is {setting} on this host)."))
                }
                _ => msg.push('.'),
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => msg.push_str(&format!(
            " io_uring_setup failed for lack of memory ({e}): raise RLIMIT_MEMLOCK (ulimit -l), \
             about 30 MiB per shard."
        )),
        _ => match memlock_limit() {
            Some(limit) if limit < MIN_MEMLOCK => msg.push_str(&format!(
                " RLIMIT_MEMLOCK is {} KiB; a shard needs at least 512 KiB of locked memory \
                 (ulimit -l), about 30 MiB to run with registered buffers.",
                limit / 1024
            )),
            _ => {}
        },
    }
    msg
}

/// Locked memory below which glommio cannot set up a shard's rings at all.
const MIN_MEMLOCK: u64 = 512 * 1024;

/// Sets up (and closes) a one-entry io_uring: `Err` with the kernel's answer when this
/// process may not use io_uring.
fn probe_io_uring() -> io::Result<()> {
    // `struct io_uring_params` is 120 bytes; zeroed, it asks for nothing special.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup(2) reads and writes `params`, which is large enough; the file
    // descriptor it returns is ours to close.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned to us and is closed once.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

fn io_uring_disabled() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .map(|v| v.trim().to_owned())
}

/// The soft RLIMIT_MEMLOCK in bytes, `None` when unlimited.
fn memlock_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return None;
    }
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_go_round_the_allowed_cpus() {
        let allowed = [1, 3];
        let cpus: Vec<usize> = (0..5).map(|shard| cpu_for(shard, &allowed)).collect();
        assert_eq!(cpus, [1, 3, 1, 3, 1], "never a CPU outside the set");
    }

    #[test]
    fn this_process_may_run_somewhere() {
        let allowed = allowed_cpus().unwrap();
        assert!(!allowed.is_empty());
        assert!(allowed.windows(2).all(|w| w[0] < w[1]), "{allowed:?}");
    }

    #[test]
    fn an_unexplained_failure_keeps_glommio_s_words() {
        let msg = explain(3, Some(5), "something odd");
        assert!(
            msg.starts_with("cannot start a shard executor (shard 3 on CPU 5): something odd."),
            "{msg}"
        );
        let msg = explain(3, None, "something odd");
        assert!(
            msg.starts_with("cannot start a shard executor (shard 3): something odd."),
            "a floating shard names no CPU: {msg}"
        );
    }
}
