//! The daemon's tests over real sockets: the API, devices, events, sync between daemons on
//! loopback, hostile and damaged input, full disks and restarts. One test binary, so that the
//! daemon and the test kit are linked once.
#![allow(clippy::unwrap_used)]

mod api;
mod attachments;
mod backup;
mod craft;
mod devices;
mod events;
mod full_disk;
mod hostile_peer;
mod large_sync;
mod link_client;
mod many_writers;
mod mesh_trust;
mod metrics;
mod mutated_input;
mod peers;
mod persistence;
mod recorded;
