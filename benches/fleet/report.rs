//! The figures of a run and the report made of them: one table with both
//! systems and their ratio, how each figure grows with the fleet, and the
//! issue's targets checked against this run.

use std::fmt::Write;

use serde::Serialize;

use crate::procs::{median, percentile};
use crate::stored::Stored;

/// Where the hand-kept part of docs/performance.md begins (console page
/// timings from scripts/bench-ui.sh); a run keeps it as it is.
pub const KEPT_SECTION: &str = "\n## Console pages";

/// The config store's reload debounce (`configstore::watch`): part of the
/// commit -> APPLIED budget.
const RELOAD_DEBOUNCE_MS: f64 = 150.0;

#[derive(Debug, Default, Serialize)]
pub struct Baseline {
    pub connect_s: f64,
    pub rss_empty_kib: u64,
    pub rss_idle_kib: u64,
    /// After each broadcast.
    pub rss_after_kib: Vec<u64>,
    /// Broadcast -> every stream acked, per broadcast.
    pub broadcast_ms: Vec<f64>,
    /// The same with every ack answered (OpAMP's reply to a status
    /// report), per broadcast.
    pub replied_ms: Vec<f64>,
    pub idle_cpu_pct: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct LinkMesh {
    pub connected: u64,
    pub connect_s: f64,
    pub enroll_per_s: f64,
    pub rss_empty_kib: u64,
    pub rss_idle_kib: u64,
    pub rss_after_kib: Vec<u64>,
    /// Per push: API call -> each collector received it.
    pub push_p50_ms: Vec<f64>,
    pub push_p99_ms: Vec<f64>,
    pub push_max_ms: Vec<f64>,
    /// Per push: API call -> all APPLIED in the fleet summary.
    pub applied_ms: Vec<f64>,
    pub commit_applied_ms: Option<f64>,
    /// Sorted request latencies.
    pub page_ms: Vec<f64>,
    pub summary_ms: Vec<f64>,
    pub idle_cpu_pct: Option<f64>,
    pub idle_writes_per_s: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Figures {
    pub n: usize,
    pub base: Baseline,
    pub lm: LinkMesh,
    pub raw_per_s: f64,
}

impl Figures {
    fn per(&self, kib: u64) -> f64 {
        kib as f64 / self.n.max(1) as f64
    }
    fn base_after(&self) -> f64 {
        self.per(self.base.rss_after_kib.last().copied().unwrap_or(0))
    }
    fn lm_after(&self) -> f64 {
        self.per(self.lm.rss_after_kib.last().copied().unwrap_or(0))
    }
    fn bcast(&self) -> f64 {
        median(&self.base.broadcast_ms)
    }
    fn replied(&self) -> f64 {
        median(&self.base.replied_ms)
    }
    fn p99(&self) -> f64 {
        median(&self.lm.push_p99_ms)
    }
    fn applied(&self) -> f64 {
        median(&self.lm.applied_ms)
    }
    fn rows(&self) -> Vec<(String, String, String, String)> {
        let r = |a: f64, b: f64| {
            if a > 0.0 && b.is_finite() {
                format!("{:.2}×", b / a)
            } else {
                "–".into()
            }
        };
        let f0 = |v: f64| format!("{v:.0}");
        let f1 = |v: f64| format!("{v:.1}");
        let n = self.n;
        let mut rows = vec![
            (
                format!("1. connected of {n}"),
                n.to_string(),
                self.lm.connected.to_string(),
                String::new(),
            ),
            (
                "1. time to connect, s".into(),
                format!("{:.1}", self.base.connect_s),
                format!("{:.1}", self.lm.connect_s),
                r(self.base.connect_s, self.lm.connect_s),
            ),
            (
                "2. RSS per collector idle, KiB".into(),
                f1(self.per(self.base.rss_idle_kib)),
                f1(self.per(self.lm.rss_idle_kib)),
                r(self.per(self.base.rss_idle_kib), self.per(self.lm.rss_idle_kib)),
            ),
            (
                format!("2. RSS per collector after {} pushes, KiB", self.lm.rss_after_kib.len()),
                f1(self.base_after()),
                f1(self.lm_after()),
                r(self.base_after(), self.lm_after()),
            ),
            (
                "2. the same less each server's RSS before any collector connected (binary, runtime), idle, KiB".into(),
                f1(self.per(self.base.rss_idle_kib.saturating_sub(self.base.rss_empty_kib))),
                f1(self.per(self.lm.rss_idle_kib.saturating_sub(self.lm.rss_empty_kib))),
                r(
                    self.per(self.base.rss_idle_kib.saturating_sub(self.base.rss_empty_kib)),
                    self.per(self.lm.rss_idle_kib.saturating_sub(self.lm.rss_empty_kib)),
                ),
            ),
            (
                "3. push to all: p50 / p99 / max, ms (baseline: broadcast → all acks)".into(),
                f0(self.bcast()),
                format!(
                    "{:.0} / {:.0} / {:.0}",
                    median(&self.lm.push_p50_ms),
                    self.p99(),
                    median(&self.lm.push_max_ms)
                ),
                format!("p99 {}", r(self.bcast(), self.p99())),
            ),
            (
                "3. push p99 against the baseline answering each ack (OpAMP's reply to a status report), ms".into(),
                f0(self.replied()),
                f0(self.p99()),
                r(self.replied(), self.p99()),
            ),
            (
                "4. API call → all APPLIED in the summary, ms".into(),
                f0(self.bcast()),
                f0(self.applied()),
                r(self.bcast(), self.applied()),
            ),
        ];
        if let Some(c) = self.lm.commit_applied_ms {
            let budget = self.bcast() + RELOAD_DEBOUNCE_MS;
            rows.push((
                "5. git commit → all APPLIED, ms (baseline: broadcast + 150 ms debounce)".into(),
                f0(budget),
                f0(c),
                r(budget, c),
            ));
        }
        if let Some(w) = self.lm.idle_writes_per_s {
            rows.push((
                "6. idle, heartbeats every 30 s: store writes/s".into(),
                "0".into(),
                f1(w),
                String::new(),
            ));
        }
        if let (Some(b), Some(l)) = (self.base.idle_cpu_pct, self.lm.idle_cpu_pct) {
            rows.push(("6. idle: server CPU, % of one core".into(), f1(b), f1(l), r(b, l)));
        }
        rows.push((
            "7. enrollment/s, durable (baseline: raw redb commit loop)".into(),
            f0(self.raw_per_s),
            f0(self.lm.enroll_per_s),
            r(self.raw_per_s, self.lm.enroll_per_s),
        ));
        rows.push((
            format!("8. collectors page (100, label filter) p50 / p99 at {n} stored, ms"),
            String::new(),
            format!(
                "{:.1} / {:.1}",
                percentile(&self.lm.page_ms, 50.0),
                percentile(&self.lm.page_ms, 99.0)
            ),
            String::new(),
        ));
        rows.push((
            format!("8. fleet summary p50 / p99 at {n} stored, ms"),
            String::new(),
            format!(
                "{:.1} / {:.1}",
                percentile(&self.lm.summary_ms, 50.0),
                percentile(&self.lm.summary_ms, 99.0)
            ),
            String::new(),
        ));
        rows
    }
}

/// The one table: every figure at every size, both systems, the ratio.
pub fn table(all: &[Figures]) -> String {
    let mut s = String::from("| N | figure | bare baseline | LinkMesh | ratio |\n|---:|---|---:|---:|---:|\n");
    for f in all {
        for (name, b, l, r) in f.rows() {
            let _ = writeln!(s, "| {} | {name} | {b} | {l} | {r} |", f.n);
        }
    }
    s
}

fn growth(all: &[Figures]) -> String {
    let mut s = String::from("| figure |");
    for f in all {
        let _ = write!(s, " {} |", f.n);
    }
    s.push_str("\n|---|");
    s.push_str(&"---:|".repeat(all.len()));
    s.push('\n');
    type Get = fn(&Figures) -> f64;
    let lines: [(&str, Get); 9] = [
        ("LinkMesh RSS idle, MiB", |f| f.lm.rss_idle_kib as f64 / 1024.0),
        ("baseline RSS idle, MiB", |f| f.base.rss_idle_kib as f64 / 1024.0),
        ("LinkMesh RSS after pushes, MiB", |f| f.lm_after() * f.n as f64 / 1024.0),
        ("baseline RSS after broadcasts, MiB", |f| {
            f.base_after() * f.n as f64 / 1024.0
        }),
        ("LinkMesh push p99, ms", |f| f.p99()),
        ("baseline broadcast → all acks, ms", |f| f.bcast()),
        ("baseline answering each ack: broadcast → all acks, ms", |f| {
            f.replied()
        }),
        ("LinkMesh all APPLIED, ms", |f| f.applied()),
        ("LinkMesh summary p50, ms", |f| percentile(&f.lm.summary_ms, 50.0)),
    ];
    for (name, get) in lines {
        let _ = write!(s, "| {name} |");
        for f in all {
            let _ = write!(s, " {:.1} |", get(f));
        }
        s.push('\n');
    }
    s
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**not met**"
    }
}

/// Figure 8 with many collectors stored.
pub fn stored_table(st: &Stored) -> String {
    let mut s = String::from("| figure | p50 | p99 | max |\n|---|---:|---:|---:|\n");
    let mut row = |name: String, v: &[f64]| {
        let _ = writeln!(
            s,
            "| {name} | {:.1} | {:.1} | {:.1} |",
            percentile(v, 50.0),
            percentile(v, 99.0),
            v.last().copied().unwrap_or(f64::NAN)
        );
    };
    row(format!("fleet summary at {} stored, ms", st.n), &st.summary_ms);
    row(
        format!("collectors page (100, label filter) at {} stored, ms", st.n),
        &st.page_ms,
    );
    let _ = writeln!(
        s,
        "\nThe server on that store was ready {:.1} s after it started (it builds its fleet index from the store).",
        st.ready_s
    );
    s
}

fn targets(all: &[Figures], stored: Option<&Stored>) -> String {
    let mut s = String::from("| target | this run | |\n|---|---|---|\n");
    let Some(big) = all.iter().max_by_key(|f| f.n) else {
        return s;
    };
    let at10k = all.iter().find(|f| f.n == 10_000).unwrap_or(big);
    let mut row = |t: &str, got: String, ok: bool| {
        let _ = writeln!(s, "| {t} | {got} | {} |", verdict(ok));
    };
    row(
        "19,000 collectors on one instance (embedded store)",
        format!("{} of {} connected", big.lm.connected, big.n),
        big.n >= 19_000 && big.lm.connected as usize == big.n,
    );
    for f in all {
        let idle = f.per(f.lm.rss_idle_kib) / f.per(f.base.rss_idle_kib);
        let after = f.lm_after() / f.base_after();
        row(
            &format!("RSS per collector ≤ 1.1× baseline at {} (idle / after pushes)", f.n),
            format!("{idle:.2}× / {after:.2}×"),
            idle <= 1.1 && after <= 1.1,
        );
    }
    for f in all {
        let ratio = f.p99() / f.bcast();
        let late = f.applied() - median(&f.lm.push_max_ms);
        row(
            &format!("push p99 ≤ 1.5× baseline, all APPLIED ≤ 200 ms later, at {}", f.n),
            format!("{ratio:.2}×, +{late:.0} ms"),
            ratio <= 1.5 && late <= 200.0,
        );
    }
    if let Some(c) = at10k.lm.commit_applied_ms {
        let budget = 1.5 * at10k.bcast() + RELOAD_DEBOUNCE_MS;
        row(
            &format!("commit → all {} APPLIED ≤ 1.5× baseline + debounce", at10k.n),
            format!("{c:.0} ms (budget {budget:.0} ms)"),
            c <= budget,
        );
    }
    if let Some(w) = big.lm.idle_writes_per_s {
        row(
            &format!("idle fleet ≤ 50 store writes/s at {}", big.n),
            format!("{w:.1}/s"),
            w <= 50.0,
        );
    }
    // Each size against the raw loop run right after it, in the same run.
    for f in all {
        let (lm, raw) = (f.lm.enroll_per_s, f.raw_per_s);
        row(
            &format!("enrollment ≥ 1,000/s and ≥ 0.7× the raw redb loop at {}", f.n),
            format!("{lm:.0}/s, {:.2}× (raw loop {raw:.0}/s)", lm / raw),
            lm >= 1000.0 && lm >= 0.7 * raw,
        );
    }
    let p99 = percentile(&at10k.lm.page_ms, 99.0);
    row(
        &format!("collectors page p99 ≤ 10 ms at {}", at10k.n),
        format!("{p99:.1} ms"),
        p99 <= 10.0,
    );
    match stored {
        Some(st) => {
            let sp99 = percentile(&st.summary_ms, 99.0);
            row(
                &format!("summary ≤ 20 ms at {} stored", st.n),
                format!("{sp99:.1} ms p99"),
                st.n >= 100_000 && sp99 <= 20.0,
            );
        }
        None => {
            let _ = writeln!(
                s,
                "| summary ≤ 20 ms at 100,000 stored | not run (`--stored 0`) | not verified |"
            );
        }
    }
    s
}

pub fn markdown(all: &[Figures], sizes: &[usize], stored: Option<&Stored>) -> String {
    let sizes: Vec<String> = sizes.iter().map(|n| n.to_string()).collect();
    let mut s = String::new();
    let _ = write!(
        s,
        "# Fleet performance\n\n\
<!-- Written by `scripts/bench-fleet.sh {}`: edit benches/fleet/report.rs, not this file. -->\n\n\
How much one LinkMesh instance costs per collector, measured beside a bare\n\
tonic bidi-stream server on the same stack in the same run. The bare server\n\
has no application logic: one TCP connection and one stream per client, the\n\
same generated service with LinkMesh's 1 KiB codec buffers and server\n\
settings, and a broadcast of a ~2 KiB message that returns when every stream\n\
has acked it (the client echoes the body, as a collector reports its\n\
effective config). It answers each heartbeat with an empty message, as\n\
OpAMP asks of a server and LinkMesh does. Whatever LinkMesh costs above\n\
it is LinkMesh's own.\n\
A second broadcast figure has the bare server also answer each ack with an\n\
empty message, as OpAMP requires of a server for every status report (and\n\
LinkMesh does): one more message per stream and push, the protocol's own\n\
floor. The issue's targets are against the first.\n\
LinkMesh's server sets glibc malloc to two arenas and a fixed 1 MiB mmap\n\
threshold, and trims free memory after a burst of statuses; the bare\n\
server keeps glibc's defaults (with two arenas it measured the same).\n\n\
Run it with one command (release build; it builds what it needs):\n\n\
    scripts/bench-fleet.sh [N…]      # default 1000 10000 19000\n\n\
Server and simulators share the machine's cores over loopback, without TLS.\n\
Simulators run in several processes of at most {} collectors each, each from\n\
its own 127.0.0.x source address. LinkMesh runs on a fresh embedded (redb)\n\
store. Collectors are enrolled over gRPC, then hold one stream each, and\n\
heartbeat every 30 s. A push replaces the fleet default config with a ~2 KiB\n\
body. The push latency runs from the API call until each collector received\n\
the push (simulator clocks). \"All APPLIED\" is the moment the fleet summary\n\
first counted every collector applied; the benchmark polls it every 20 ms.\n\
The idle window (figure 6) starts once the store is quiet after the\n\
pushes (at most one commit in 2 s); nothing polls the server during it.\n\
Figure 5 uses a second server reading a local git repository (a copy of\n\
`config/examples/fleet-config`), picked up by the file watcher.\n\n\
## Results\n\n{}\n\
Ratios are LinkMesh ÷ baseline. Push figures are the median over the pushes\n\
of each push's p50 / p99 / max; RSS per collector is the whole process RSS\n\
÷ N.\n\n\
![RSS and push latency against N](performance-fleet.png)\n\n\
## How the figures grow\n\n{}\n\
## Many collectors stored\n\n\
The fleet summary and the collectors page once more, on a store filled\n\
with that many collectors (written straight into the embedded store before\n\
the server starts, not connected), {} sequential requests each:\n\n{}\n\
## Targets (issue 11)\n\n{}\n",
        sizes.join(" "),
        crate::procs::PER_PROCESS,
        table(all),
        growth(all),
        stored.map_or(0, |st| st.summary_ms.len()),
        stored.map_or_else(|| "Not run (`--stored 0`).\n".to_string(), stored_table),
        targets(all, stored)
    );
    s
}
