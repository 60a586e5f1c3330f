//! napalmctl's one integration test binary: the CLI as a process against real services.

mod cli;
mod ctl;
mod domain;
mod support;
mod watch;
