//! The relay's log lines: text for humans on stderr, and the start-up banner on stdout.
//!
//! Owns only the writing of lines, not what they say. A line that cannot be written (the
//! reader of a pipe went away, as with `pulsar-relay 2>&1 | head -1` or a log shipper that
//! stopped; a full disk behind a redirect) is dropped: losing a log line must never stop the
//! relay or its shutdown. `println!` and `eprintln!` panic on such a failure, so the crate
//! denies them (see `lib.rs`) and every line goes through here.

use std::io::Write;

/// Writes `line` and a newline to stderr in one write (so that lines of different threads
/// do not interleave), ignoring failure.
pub fn to_stderr(line: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr()
        .lock()
        .write_all(format!("{line}\n").as_bytes());
}

/// Writes `line` and a newline to stdout and flushes it (stdout is read by scripts waiting
/// for the banner), ignoring failure.
pub fn to_stdout(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("{line}\n").as_bytes());
    let _ = out.flush();
}

/// `eprintln!` that cannot panic: a log line on stderr.
#[macro_export]
macro_rules! log_line {
    ($($arg:tt)*) => {
        $crate::log::to_stderr(format_args!($($arg)*))
    };
}

/// `println!` that cannot panic: a line on stdout.
#[macro_export]
macro_rules! out_line {
    ($($arg:tt)*) => {
        $crate::log::to_stdout(format_args!($($arg)*))
    };
}
