//! Scenarios the host asks for on the command line, run in order. Each returns Ok or an error message;
//! the kernel's exit code is 0 when all pass, else the 1-based index of the first failure. Each submodule
//! owns a family of scenarios and answers `run(name, args)` with `None` for names that are not its own.

use alloc::format;
use alloc::string::String;

use crate::println;

mod above_4g;
pub mod bench;
mod bench_split;
pub mod block;
mod boot;
mod net;
mod net_loop;
mod serve;
mod serve_ics;
mod smp;
mod smp_io;
mod vmbus;
mod vmbus_model;

/// The outcome of one scenario.
pub type Outcome = Result<(), String>;

/// Every scenario family, asked in order; one line each.
const FAMILIES: &[fn(&str, &str) -> Option<Outcome>] = &[
    boot::run,
    block::run,
    bench::run,
    vmbus::run,
    serve::run,
    net::run,
    above_4g::run,
    smp::run,
];

/// Run every scenario named in `cmdline` (tokens `name` or `name:args`, separated by spaces).
pub fn run_all(cmdline: &str) -> u32 {
    for (i, token) in cmdline.split_ascii_whitespace().enumerate() {
        let (name, args) = token.split_once(':').unwrap_or((token, ""));
        let result = FAMILIES
            .iter()
            .find_map(|family| family(name, args))
            .unwrap_or_else(|| Err(format!("unknown scenario `{name}`")));
        match result {
            Ok(()) => println!("scenario {name}: ok"),
            Err(e) => {
                println!("scenario {name}: FAILED: {e}");
                return i as u32 + 1;
            }
        }
    }
    0
}
