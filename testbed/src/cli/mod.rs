//! The parts of the `testbed` binary (not of the library): the command line ([`args`]), the disk it
//! serves and the checks before any guest boots ([`disk`]), and where the report goes ([`output`]).

pub mod args;
pub mod disk;
pub mod output;
