//! The sync simulator as a benchmark: how many seeded runs per second it gets through, and,
//! from its runs, how many hops (a round trip is two), milliseconds of virtual time, messages and
//! bytes devices need to converge after the final
//! heal, as a function of how much the device furthest behind missed.
//!
//! `cargo bench -p chatsync-model --bench simulator` (`CHATSYNC_SIM_SEEDS=<n>` seeds per
//! network shape, 200 by default). Results and how to read them: docs/benchmarks.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;
#[path = "../tests/simulator/world.rs"]
mod world;

use std::time::Instant;

use world::{Report, Shape, World};

fn percentile(sorted: &[usize], p: usize) -> usize {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(sorted.len() - 1) * p / 100]
}

fn main() {
    let seeds: u64 = std::env::var("CHATSYNC_SIM_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let mut reports: Vec<Report> = Vec::new();
    println!("| shape | seeds | seeds/s |");
    println!("|---|---:|---:|");
    for (base, shape) in [
        // The leading digit names the shape, as in the tests: `CHATSYNC_SIM_SEED=<seed> cargo
        // test -p chatsync-model --test simulator` replays any of these runs.
        (10_000_000, Shape::Mesh),
        (20_000_000, Shape::Chain),
        (30_000_000, Shape::Star),
        (40_000_000, Shape::MeshCrashesOnly),
    ] {
        let began = Instant::now();
        for seed in base..base + seeds {
            reports.push(World::new(seed, shape).run());
        }
        let rate = seeds as f64 / began.elapsed().as_secs_f64();
        println!("| {shape:?} | {seeds} | {rate:.1} |");
    }
    println!();
    println!(
        "| changes missed at the heal | runs | hops p50 / p90 / max | virtual ms p50 / p90 / max | messages p50 / p90 / max | KiB p50 / p90 / max |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (low, high) in [(0, 0), (1, 10), (11, 50), (51, 200), (201, usize::MAX)] {
        let bucket: Vec<&Report> = reports
            .iter()
            .filter(|r| (low..=high).contains(&r.most_missed))
            .collect();
        if bucket.is_empty() {
            continue;
        }
        let sorted = |f: fn(&Report) -> usize| {
            let mut v: Vec<usize> = bucket.iter().map(|r| f(r)).collect();
            v.sort_unstable();
            v
        };
        let three = |v: Vec<usize>, scale: usize| {
            format!(
                "{} / {} / {}",
                percentile(&v, 50) / scale,
                percentile(&v, 90) / scale,
                v.last().copied().unwrap_or(0) / scale
            )
        };
        let range = if high == usize::MAX {
            format!("{low}+")
        } else if low == high {
            format!("{low}")
        } else {
            format!("{low}-{high}")
        };
        println!(
            "| {range} | {} | {} | {} | {} | {} |",
            bucket.len(),
            three(sorted(|r| r.hops_to_converge), 1),
            three(sorted(|r| r.ms_to_converge), 1),
            three(sorted(|r| r.messages_to_converge), 1),
            three(sorted(|r| r.bytes_to_converge), 1024),
        );
    }
}
