//! What the workloads read off a process or a directory, and how the tables print it.

use std::{path::Path, time::Duration};

/// Bytes a process has sent to the storage layer so far, from `/proc/<pid>/io`.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiskWrites {
    /// `write_bytes`: counted as pages are dirtied, whether or not they reach the disk.
    pub gross: u64,
    /// `cancelled_write_bytes`: dirty pages of files truncated or deleted before they were
    /// written back.
    pub cancelled: u64,
}

impl DiskWrites {
    pub fn of_process(pid: u32) -> DiskWrites {
        let io = std::fs::read_to_string(format!("/proc/{pid}/io"))
            .unwrap_or_else(|e| panic!("cannot read the IO counters of process {pid}: {e}"));
        let field = |name: &str| -> u64 {
            io.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        DiskWrites {
            gross: field("write_bytes:"),
            cancelled: field("cancelled_write_bytes:"),
        }
    }

    /// As the line a samod replica answers `stop` with.
    pub fn to_line(self) -> String {
        format!("{} {}", self.gross, self.cancelled)
    }

    pub fn from_line(line: &str) -> DiskWrites {
        let mut it = line.split_whitespace().map(|w| w.parse::<u64>().unwrap());
        DiskWrites {
            gross: it.next().unwrap(),
            cancelled: it.next().unwrap(),
        }
    }

    pub fn since(self, earlier: DiskWrites) -> DiskWrites {
        DiskWrites {
            gross: self.gross - earlier.gross,
            cancelled: self.cancelled - earlier.cancelled,
        }
    }

    /// What reached (or will reach) the disk.
    pub fn net(self) -> u64 {
        self.gross.saturating_sub(self.cancelled)
    }
}

/// A directory tree as `du` sees it: blocks allocated and apparent size (both counting the
/// directories too), and the number of files.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiskUse {
    pub allocated: u64,
    pub apparent: u64,
    pub files: u64,
}

pub fn disk_use(dir: &Path) -> DiskUse {
    use std::os::unix::fs::MetadataExt;
    let mut total = DiskUse::default();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            total.allocated += meta.blocks() * 512;
            total.apparent += meta.len();
            if meta.is_dir() {
                todo.push(entry.path());
            } else {
                total.files += 1;
            }
        }
    }
    total
}

/// Latencies in post order, summed up.
pub struct Latencies {
    pub p50: Duration,
    pub p99: Duration,
    /// p50 of the first and the last tenth of the posts.
    pub first: Duration,
    pub last: Duration,
}

impl Latencies {
    pub fn of(in_order: &[Duration]) -> Latencies {
        let tenth = (in_order.len() / 10).max(1);
        Latencies {
            p50: quantile(in_order, 0.5),
            p99: quantile(in_order, 0.99),
            first: quantile(&in_order[..tenth], 0.5),
            last: quantile(&in_order[in_order.len() - tenth..], 0.5),
        }
    }
}

pub fn quantile(values: &[Duration], q: f64) -> Duration {
    assert!(!values.is_empty(), "no values");
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A markdown table of one workload: chatsync, samod, and their ratio.
pub struct Table {
    title: String,
    rows: Vec<String>,
}

impl Table {
    pub fn new(title: impl Into<String>) -> Table {
        Table {
            title: title.into(),
            rows: Vec::new(),
        }
    }

    /// A row with figures for both, and their ratio.
    pub fn row(&mut self, measure: &str, chatsync: f64, samod: f64, unit: &str, decimals: usize) {
        let ratio = if samod == 0.0 {
            "-".to_string()
        } else {
            format!("{:.2}", chatsync / samod)
        };
        self.rows.push(format!(
            "| {measure} | {} | {} | {ratio} |",
            figure(chatsync, unit, decimals),
            figure(samod, unit, decimals)
        ));
    }

    /// A row whose cells are given as they are.
    pub fn text(&mut self, measure: &str, chatsync: &str, samod: &str, ratio: &str) {
        self.rows
            .push(format!("| {measure} | {chatsync} | {samod} | {ratio} |"));
    }

    pub fn print(&self) {
        println!("### {}\n", self.title);
        println!("| measure | chatsync | samod | chatsync/samod |");
        println!("|---|---:|---:|---:|");
        for r in &self.rows {
            println!("{r}");
        }
        println!();
    }
}

/// `value` with thousands separated when it is a whole number, and `unit` after it.
pub fn figure(value: f64, unit: &str, decimals: usize) -> String {
    let number = if decimals == 0 {
        group(value.round() as i64)
    } else {
        format!("{value:.decimals$}")
    };
    if unit.is_empty() {
        number
    } else {
        format!("{number} {unit}")
    }
}

fn group(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}
