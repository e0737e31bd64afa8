//! A deterministic simulator of chatsync devices syncing one chat.
//!
//! Each simulated device runs the daemon's own sync core (`chatsync_model::sync::SyncCore`:
//! summaries, sessions, fetches, transfers, slow-down, re-checks and stall restarts) over a real
//! chat document (`ChatDoc`, `Proofs` and `exchange`, exactly what the engine runs under the
//! chat's lock). The world around it stands in for the daemon's IO: a network that reorders
//! messages, loses them, cuts and heals links between devices; disks that keep only what was
//! flushed; virtual time that drives the cores' timers; and crashes that lose everything not
//! flushed and every in-memory state (the core itself, sync states, changes waiting for
//! dependencies, attestations held back), then restarts.
//!
//! Every run is decided by its seed: a failure prints the seed, and
//! `CHATSYNC_SIM_SEED=<seed> cargo test -p chatsync-model --test simulator` replays exactly
//! that run. `CHATSYNC_SIM_SEEDS=<n>` runs more seeds (see docs/testing.md).
//!
//! Properties checked after the final heal, for every seed: every acknowledged post is on every
//! device exactly once; every device shows the same messages in the same order; they got there
//! within a bounded virtual time (`world::CONVERGE_WITHIN`); and no device ever refused
//! another's data (no offence, no unproven authorship, nothing).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;
mod world;

use world::{Shape, World};

/// Seeds each test runs unless `CHATSYNC_SIM_SEEDS` says otherwise.
const DEFAULT_SEEDS: u64 = 1_000;

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
                report.hops_to_converge,
                report.ms_to_converge,
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
        let max = |f: fn(&(usize, usize, usize, usize, usize)) -> usize| rounds.iter().map(f).max();
        eprintln!(
            "{} seeds from {base}: after the heal at most {:?} hops, {:?} ms (virtual), {:?} messages, {:?} bytes \
             (at most {:?} changes missed); see docs/benchmarks.md for the distribution",
            rounds.len(),
            max(|r| r.0),
            max(|r| r.1),
            max(|r| r.2),
            max(|r| r.3),
            max(|r| r.4),
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
