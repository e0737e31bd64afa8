//! A deterministic simulator of chatsync devices syncing one chat.
//!
//! Each simulated device runs the real sync core of one chat (`ChatDoc`, `Proofs` and
//! `exchange`, exactly what the daemon's engine runs under the chat's lock) over a simulated
//! network that reorders messages across conversations, loses them, cuts and heals links
//! between devices, and crashes devices (losing everything not flushed to their simulated disk,
//! and every in-memory state: sync states, changes waiting for dependencies, attestations held
//! back) and restarts them. The network part mirrors the daemon's sessions (`net/sessions.rs`):
//! a device that changes a chat runs a conversation with each linked device, devices compare
//! heads now and then (the summary exchange) and the one with the smaller id runs one where
//! they differ, a device that lacks the chat fetches it whole, and a lost or refused message
//! makes the side that notices start afresh.
//!
//! Every run is decided by its seed: a failure prints the seed, and
//! `CHATSYNC_SIM_SEED=<seed> cargo test -p chatsync-model --test simulator` replays exactly
//! that run. `CHATSYNC_SIM_SEEDS=<n>` runs more seeds (see docs/testing.md).
//!
//! Properties checked after the final heal, for every seed: every acknowledged post is on every
//! device exactly once; every device shows the same messages in the same order; they got there
//! within a bounded number of rounds; and no device ever refused another's data (no offence, no
//! unproven authorship, nothing).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;
mod world;

use world::{Shape, World};

/// Seeds each test runs unless `CHATSYNC_SIM_SEEDS` says otherwise.
const DEFAULT_SEEDS: u64 = 250;

fn seeds(base: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("CHATSYNC_SIM_SEED") {
        let seed: u64 = seed.parse().expect("CHATSYNC_SIM_SEED is a number");
        // The leading digit of the millions names the shape, in the tests' seeds (1,000,000 +
        // n) and the benchmark's (10,000,000 + n) alike.
        return if leading_digit(seed / 1_000_000) == leading_digit(base / 1_000_000) {
            vec![seed]
        } else {
            Vec::new()
        };
    }
    let count = std::env::var("CHATSYNC_SIM_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_SEEDS);
    (base..base + count).collect()
}

fn leading_digit(mut n: u64) -> u64 {
    while n >= 10 {
        n /= 10;
    }
    n
}

fn run(base: u64, shape: Shape) {
    let mut rounds = Vec::new();
    for seed in seeds(base) {
        let outcome = std::panic::catch_unwind(|| World::new(seed, shape).run());
        match outcome {
            Ok(report) => rounds.push((
                report.rounds_to_converge,
                report.messages_to_converge,
                report.bytes_to_converge,
                report.most_missed,
            )),
            Err(_) => panic!(
                "simulator seed {seed} failed; replay it with CHATSYNC_SIM_SEED={seed} cargo test -p chatsync-model --test simulator"
            ),
        }
    }
    if !rounds.is_empty() {
        let max = |f: fn(&(usize, usize, usize, usize)) -> usize| rounds.iter().map(f).max();
        eprintln!(
            "{} seeds from {base}: after the heal at most {:?} rounds, {:?} messages, {:?} bytes \
             (at most {:?} changes missed); see docs/benchmarks.md for the distribution",
            rounds.len(),
            max(|r| r.0),
            max(|r| r.1),
            max(|r| r.2),
            max(|r| r.3),
        );
    }
}

#[test]
fn every_device_converges_in_a_full_mesh_under_faults() {
    run(1_000_000, Shape::Mesh);
}

#[test]
fn every_device_converges_through_forwarding_devices_under_faults() {
    run(2_000_000, Shape::Chain);
}

#[test]
fn every_device_converges_in_a_star_under_faults() {
    run(3_000_000, Shape::Star);
}

#[test]
fn every_device_converges_with_crashes_only() {
    run(4_000_000, Shape::MeshCrashesOnly);
}
