//! napalm-agent tests, one binary. Fast logic runs against libvirt's `test:///default`
//! driver in-process (`otlp` against an in-test OTLP receiver); `qemu` boots real guests
//! through the host's libvirtd (`qemu:///system`, started by `scripts/services start`) and
//! kills the agent process.

mod bench;
mod client;
mod common;
mod console;
mod grpc;
mod hostile;
mod join;
mod mdns;
mod monitoring;
mod otlp;
mod port_filter;
mod qemu;
mod reconcile;
mod rest;
mod tls;
