//! The one integration test binary of the workspace (one binary links faster than many).
//! Each module is one capability checked end to end against the real machine.

mod clients;
mod debian;
mod grid;
mod host_setup;
