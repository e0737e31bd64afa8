//! End-to-end tests: the real `chatsync` and `chatsyncd` binaries, each test with its own
//! temporary home (see `support`).

#![allow(clippy::unwrap_used)]

mod apart;
mod attachments;
mod backup;
mod bad_requests;
mod chaos;
mod cli_flow;
mod crash;
mod devices;
mod doctor;
mod follow;
mod full_disk;
mod lan;
mod mesh;
mod metrics;
mod netns;
mod paging;
mod pairing;
mod service;
mod signals;
mod support;
mod trio;
mod web;
