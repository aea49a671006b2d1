//! `pulsar-loadgen`: the load generator of Pulsar Relay. Parses the command line, runs one
//! scenario, prints its summary and writes the `--json` / `--hgrm` / `--svg` files; or
//! draws `.hgrm` files (`plot`).
//!
//! Exit codes: 0 when the run passed, 1 when it could not run (relay unreachable, setup
//! refused), 2 for a bad command line, 3 when it ran but cannot be trusted: errors, lost or
//! duplicate deliveries above `--max-error-rate`, or nothing measured. Scripts and CI rely
//! on it, so a run full of errors never exits 0. `plot` exits 1 when an input is missing
//! or is not a percentile distribution.

mod args;
mod buf;
mod clock;
mod cpu;
mod hgrm;
mod http;
mod plot;
mod poller;
mod progress;
mod publisher;
mod report;
mod scenario;
mod tls;
mod token;
mod ws;

use std::process::ExitCode;

fn main() -> ExitCode {
    let options = match args::parse(std::env::args().skip(1).collect()) {
        Ok(args::Parsed::Help) => {
            println!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(args::Parsed::Run(options)) => options,
        Ok(args::Parsed::Plot(request)) => {
            return match plot::run(&request) {
                Ok(done) => {
                    println!("pulsar-loadgen plot: {done}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("pulsar-loadgen plot: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Err(e) => {
            eprintln!("pulsar-loadgen: {e}\n(pulsar-loadgen --help lists the scenarios and flags)");
            return ExitCode::from(2);
        }
    };
    raise_file_limit();
    let summary = match scenario::run(&options) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pulsar-loadgen: {e}");
            return ExitCode::from(1);
        }
    };
    let _ = summary.print(&mut std::io::stdout().lock());
    let common = &options.common;
    let files = report::Files {
        json: common.json.as_deref(),
        hgrm: common.hgrm.as_deref(),
        svg: common.svg.as_deref(),
    };
    if let Err(e) = summary.write_files(&files) {
        eprintln!("pulsar-loadgen: {e}");
        return ExitCode::from(1);
    }
    match summary.verdict(common.max_error_rate) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("pulsar-loadgen: FAILED: {why}");
            ExitCode::from(3)
        }
    }
}

/// Thousands of sockets need more than the usual soft limit of 1024 descriptors; the hard
/// limit is ours to take.
fn raise_file_limit() {
    // SAFETY: getrlimit/setrlimit read and write the struct they are given.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
