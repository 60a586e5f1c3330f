//! # napalm-overlay — the Clone engine (thesis 3.1, 3.5.1, annex IV)
//!
//! Owns: loading `clones.conf` (values cascading global → group → host, with provenance),
//! template sets (the thesis's GCDSE: rendered `*.tmpl`, copied files, whiteouts, stacking),
//! and building each clone's differentiation layer in its output forms (directory in the
//! portable whiteout convention, newc cpio segment, tar.gz) plus cluster-wide files
//! (`/etc/hosts`, MPI hostfile, ssh known_hosts).
//!
//! Must not touch: libvirt, the network, mounts, or anything outside the output directory
//! it is given. The coordinator calls it; `napalmctl clone …` exposes it.
//!
//! Status: the engine arrives with issue #3; this crate is the place it goes.
