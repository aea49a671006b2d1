//! Seccomp confinement for the deployment tests: turns the syscall rules of the shipped
//! deployment files (Docker's profile format in tools/deploy/seccomp-io_uring.json, the
//! systemd unit's `SystemCallFilter=` and its seccomp-backed options) into a classic BPF
//! program, and installs it in a spawned child before exec, as runc and systemd do.
//!
//! It reads only the deployment files and `systemd-analyze`; it never touches the relay's
//! code. It understands just the profile features the shipped files use and refuses any
//! other, so a profile it cannot read faithfully fails the test instead of passing it.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::process::Command;

use serde_json::Value;

/// What a matching rule (or no rule) does to the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    Errno(u16),
}

/// `(args[index] & mask) == value`, on the whole 64-bit argument.
#[derive(Clone, Copy, Debug)]
struct Cond {
    index: u32,
    mask: u64,
    value: u64,
}

#[derive(Clone, Debug)]
struct Rule {
    nr: u32,
    conds: Vec<Cond>,
    action: Action,
}

/// An ordered rule list: the first rule whose call number and conditions match decides;
/// calls no rule matches get `default`.
#[derive(Clone, Debug)]
pub struct Filter {
    rules: Vec<Rule>,
    default: Action,
    numbers: HashMap<String, u32>,
}

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
/// x32 ABI calls carry this bit; neither deployment file admits that ABI.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const EPERM: u16 = libc::EPERM as u16;

impl Filter {
    fn new(default: Action) -> Filter {
        Filter {
            rules: Vec::new(),
            default,
            numbers: syscall_numbers(),
        }
    }

    /// The filter Docker builds from a profile in its JSON format (x86_64 only).
    pub fn from_docker_profile(profile: &Value) -> Filter {
        let object = profile.as_object().expect("the profile is a JSON object");
        for key in object.keys() {
            assert!(
                ["defaultAction", "defaultErrnoRet", "archMap", "syscalls"].contains(&key.as_str()),
                "profile key {key:?} is not understood by this test"
            );
        }
        let errno = |v: &Value| v.as_u64().map_or(EPERM, |n| n as u16);
        let action = |name: &Value, ret: &Value| match name.as_str() {
            Some("SCMP_ACT_ALLOW") => Action::Allow,
            Some("SCMP_ACT_ERRNO") => Action::Errno(errno(ret)),
            other => panic!("action {other:?} is not understood by this test"),
        };
        let archs: Vec<&str> = profile["archMap"]
            .as_array()
            .expect("archMap")
            .iter()
            .map(|a| a["architecture"].as_str().expect("architecture"))
            .collect();
        assert!(
            archs.contains(&"SCMP_ARCH_X86_64"),
            "the profile does not cover x86_64: {archs:?}"
        );
        let mut filter = Filter::new(action(
            &profile["defaultAction"],
            &profile["defaultErrnoRet"],
        ));
        for rule in profile["syscalls"].as_array().expect("syscalls") {
            for key in rule.as_object().expect("rule object").keys() {
                assert!(
                    ["comment", "names", "action", "args", "errnoRet"].contains(&key.as_str()),
                    "rule key {key:?} is not understood by this test: {rule}"
                );
            }
            let conds: Vec<Cond> = rule["args"]
                .as_array()
                .map(|args| args.iter().map(docker_cond).collect())
                .unwrap_or_default();
            let action = action(&rule["action"], &rule["errnoRet"]);
            for name in rule["names"].as_array().expect("names") {
                filter.push(name.as_str().expect("name"), &conds, action);
            }
        }
        filter
    }

    /// The filter systemd builds for `unit` (the text of a .service file), from its
    /// `SystemCallFilter=`, `SystemCallErrorNumber=`, `MemoryDenyWriteExecute=` and
    /// `RestrictAddressFamilies=` lines. `None` when `systemd-analyze` is not installed (it
    /// expands the @groups of the systemd version at hand).
    pub fn from_systemd_unit(unit: &str) -> Option<Filter> {
        let allowed = unit_allowed_syscalls(unit)?;
        let errno = match directive(unit, "SystemCallErrorNumber").as_deref() {
            Some("EPERM") => EPERM,
            other => panic!("SystemCallErrorNumber={other:?} is not understood by this test"),
        };
        let mut filter = Filter::new(Action::Errno(errno));
        if directive(unit, "MemoryDenyWriteExecute").as_deref() == Some("yes") {
            // systemd's rules: no mapping both writable and executable, no later PROT_EXEC.
            let (w, x) = (libc::PROT_WRITE as u64, libc::PROT_EXEC as u64);
            let denied = Action::Errno(EPERM);
            filter.push("mmap", &[cond(2, w | x, w | x)], denied);
            filter.push("mprotect", &[cond(2, x, x)], denied);
            filter.push("pkey_mprotect", &[cond(2, x, x)], denied);
            filter.push("shmat", &[cond(2, 0o100000, 0o100000)], denied);
        }
        if let Some(families) = directive(unit, "RestrictAddressFamilies") {
            for family in families.split_whitespace() {
                let number = match family {
                    "AF_UNIX" => libc::AF_UNIX,
                    "AF_INET" => libc::AF_INET,
                    "AF_INET6" => libc::AF_INET6,
                    other => panic!("address family {other} is not understood by this test"),
                };
                filter.push("socket", &[cond(0, u64::MAX, number as u64)], Action::Allow);
            }
            filter.push("socket", &[], Action::Errno(libc::EAFNOSUPPORT as u16));
        }
        for name in &allowed {
            filter.push(name, &[], Action::Allow);
        }
        Some(filter)
    }

    /// Whether some rule admits `name` (with any arguments).
    pub fn allows(&self, name: &str) -> bool {
        let nr = self.numbers[name];
        self.rules
            .iter()
            .any(|r| r.nr == nr && r.action == Action::Allow)
    }

    /// The same filter with every rule for `name` removed (it then gets the default).
    pub fn without(&self, name: &str) -> Filter {
        let nr = self.numbers[name];
        let mut filter = self.clone();
        filter.rules.retain(|r| r.nr != nr);
        filter
    }

    /// Names this machine's kernel headers do not know are skipped, as libseccomp does for
    /// names of other architectures or newer kernels.
    fn push(&mut self, name: &str, conds: &[Cond], action: Action) {
        if let Some(&nr) = self.numbers.get(name) {
            self.rules.push(Rule {
                nr,
                conds: conds.to_vec(),
                action,
            });
        }
    }

    /// The BPF program: check the architecture, then each rule in order.
    pub fn program(&self) -> Vec<libc::sock_filter> {
        let mut prog = vec![
            load(4),
            jump_eq(AUDIT_ARCH_X86_64, 1, 0),
            ret_raw(libc::SECCOMP_RET_KILL_PROCESS),
            load(0),
            // BPF_JMP | BPF_JGE | BPF_K
            insn(0x35, 0, 1, X32_SYSCALL_BIT),
            ret(self.default),
        ];
        for rule in &self.rules {
            let mut body = vec![load(0), jump_eq(rule.nr, 0, 0)];
            for c in &rule.conds {
                let offset = 16 + 8 * c.index;
                for (half, shift) in [(0, 0), (4, 32)] {
                    body.push(load(offset + half));
                    // BPF_ALU | BPF_AND | BPF_K
                    body.push(insn(0x54, 0, 0, (c.mask >> shift) as u32));
                    body.push(jump_eq((c.value >> shift) as u32, 0, 0));
                }
            }
            body.push(ret(rule.action));
            // Every failed comparison skips to the first instruction of the next rule.
            let len = body.len();
            for (i, op) in body.iter_mut().enumerate() {
                if op.code == 0x15 {
                    op.jf = u8::try_from(len - 1 - i).expect("rule fits a BPF jump");
                }
            }
            prog.extend(body);
        }
        prog.push(ret(self.default));
        prog
    }
}

/// Installs `program` on the calling thread; meant for `CommandExt::pre_exec`, so it only
/// makes system calls (no allocation).
pub fn install(program: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with constant options; `fprog` points at `program`, alive for the call.
    unsafe {
        let none: libc::c_ulong = 0;
        if libc::prctl(
            libc::PR_SET_NO_NEW_PRIVS,
            1 as libc::c_ulong,
            none,
            none,
            none,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const libc::sock_fprog,
            none,
            none,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn docker_cond(arg: &Value) -> Cond {
    let index = arg["index"].as_u64().expect("index") as u32;
    let value = arg["value"].as_u64().expect("value");
    match arg["op"].as_str() {
        Some("SCMP_CMP_MASKED_EQ") => cond(index, value, arg["valueTwo"].as_u64().unwrap_or(0)),
        Some("SCMP_CMP_EQ") => cond(index, u64::MAX, value),
        other => panic!("argument operator {other:?} is not understood by this test"),
    }
}

fn cond(index: u32, mask: u64, value: u64) -> Cond {
    Cond { index, mask, value }
}

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// BPF_LD | BPF_W | BPF_ABS: a 32-bit word of `struct seccomp_data`.
fn load(offset: u32) -> libc::sock_filter {
    insn(0x20, 0, 0, offset)
}

/// BPF_JMP | BPF_JEQ | BPF_K
fn jump_eq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    insn(0x15, jt, jf, k)
}

fn ret_raw(k: u32) -> libc::sock_filter {
    insn(0x06, 0, 0, k)
}

fn ret(action: Action) -> libc::sock_filter {
    ret_raw(match action {
        Action::Allow => libc::SECCOMP_RET_ALLOW,
        Action::Errno(e) => libc::SECCOMP_RET_ERRNO | u32::from(e),
    })
}

/// x86_64 system call numbers from the kernel headers (Debian's linux-libc-dev).
fn syscall_numbers() -> HashMap<String, u32> {
    const HEADER: &str = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h";
    let text = std::fs::read_to_string(HEADER).unwrap_or_else(|e| {
        panic!("cannot read {HEADER} ({e}): install linux-libc-dev (it comes with gcc)")
    });
    text.lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("#define __NR_")?.split_whitespace();
            let name = words.next()?;
            let nr = words.next()?.parse().ok()?;
            Some((name.to_string(), nr))
        })
        .collect()
}

/// The last value of `key=` in the unit (later assignments win).
pub fn directive(unit: &str, key: &str) -> Option<String> {
    directives(unit, key).last().cloned()
}

fn directives(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|line| line.trim().strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_string())
        .collect()
}

/// The calls a unit's `SystemCallFilter=` lines allow, with systemd's rules: the first line
/// decides that this is an allow-list (which then always holds @default), and each later
/// line adds its calls, or with `~` removes them, in order.
fn unit_allowed_syscalls(unit: &str) -> Option<BTreeSet<String>> {
    Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .ok()?;
    let mut allowed = BTreeSet::new();
    for (i, line) in directives(unit, "SystemCallFilter").iter().enumerate() {
        let (remove, list) = match line.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, line.as_str()),
        };
        assert!(
            i > 0 || !remove,
            "this test expects the unit's first SystemCallFilter= to be an allow-list"
        );
        let mut names = BTreeSet::new();
        if i == 0 {
            names.extend(expand("@default"));
        }
        for item in list.split_whitespace() {
            if item.starts_with('@') {
                names.extend(expand(item));
            } else {
                names.insert(item.to_string());
            }
        }
        if remove {
            allowed.retain(|n| !names.contains(n));
        } else {
            allowed.extend(names);
        }
    }
    Some(allowed)
}

/// The calls of a systemd @group, nested groups included.
fn expand(group: &str) -> BTreeSet<String> {
    let out = Command::new("systemd-analyze")
        .args(["syscall-filter", group])
        .output()
        .expect("run systemd-analyze syscall-filter");
    assert!(
        out.status.success(),
        "systemd-analyze syscall-filter {group}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 output");
    let mut names = BTreeSet::new();
    // The first line is the group's own name; then comments, calls and nested groups.
    for item in text.lines().skip(1).map(str::trim) {
        if item.is_empty() || item.starts_with('#') {
            continue;
        }
        if item.starts_with('@') {
            names.extend(expand(item));
        } else {
            names.insert(item.to_string());
        }
    }
    names
}
