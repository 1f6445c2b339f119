//! Processes of a benchmark run: the servers and simulator processes it
//! starts (line-based control over stdin/stdout), and what /proc says
//! about a server (RSS, CPU time).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout, Command};

/// One process started by the run, killed when dropped.
pub struct Proc {
    pub name: String,
    child: tokio::process::Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Proc {
    pub fn spawn(name: impl Into<String>, mut cmd: Command) -> anyhow::Result<Proc> {
        let name = name.into();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = child.stdout.take().context("no stdout")?;
        Ok(Proc {
            name,
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub async fn send(&mut self, line: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// The rest of the next line starting with `word`; other lines are
    /// passed through to our stderr (progress of the child).
    pub async fn expect(&mut self, word: &str, within: Duration) -> anyhow::Result<String> {
        let read = async {
            loop {
                let Some(line) = self.lines.next_line().await? else {
                    bail!("{} ended before answering {word:?}", self.name);
                };
                if let Some(rest) = line.strip_prefix(word) {
                    return Ok(rest.trim().to_string());
                }
                if let Some(err) = line.strip_prefix("error") {
                    bail!("{}: {}", self.name, err.trim());
                }
                eprintln!("  [{}] {line}", self.name);
            }
        };
        tokio::time::timeout(within, read)
            .await
            .with_context(|| format!("{} did not answer {word:?} within {within:?}", self.name))?
    }

    pub async fn stop(mut self) {
        let _ = self.send("quit").await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// This binary (the run starts copies of itself in other roles).
pub fn me() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the benchmark binary")
}

/// The `linkmesh` binary: `$LINKMESH_BIN_DIR/linkmesh`, else next to the
/// cargo output directory this benchmark was built into.
pub fn linkmesh_bin() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("LINKMESH_BIN_DIR") {
        Some(dir) => PathBuf::from(dir).join("linkmesh"),
        None => {
            // target/<profile>/deps/fleet-<hash> -> target/<profile>/linkmesh
            let exe = me()?;
            let profile_dir = exe.parent().and_then(|d| d.parent()).context("odd binary location")?;
            profile_dir.join("linkmesh")
        }
    };
    if !path.exists() {
        bail!(
            "{} does not exist: build it first (scripts/bench-fleet.sh does)",
            path.display()
        );
    }
    Ok(path)
}

/// Raise the soft open-file limit to the hard one (children inherit it):
/// every collector is a socket on each side.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a stack struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

/// User + system CPU time of a process so far, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 of the whole line.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| f.get(*i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks / hz
}

/// The 1-minute load average, to note beside figures from a shared machine.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// A loopback port nobody listens on now.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Simulator processes for `n` collectors: at most `PER_PROCESS` each (one
/// process may hold 20,000 open files here), each from its own loopback
/// source address so no address runs out of ephemeral ports.
pub const PER_PROCESS: usize = 5000;

pub fn shares(n: usize) -> Vec<(usize, String)> {
    let procs = n.div_ceil(PER_PROCESS).max(1);
    (0..procs)
        .map(|k| {
            let count = n / procs + usize::from(k < n % procs);
            (count, format!("127.0.0.{}", 2 + k))
        })
        .collect()
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    percentile(&v, 50.0)
}
