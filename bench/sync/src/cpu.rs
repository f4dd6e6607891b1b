//! CPU time from /proc: how busy the machine was during a measurement besides the benchmark's own
//! processes (this machine is shared; a row measured beside a compiler is not comparable).

/// Clock ticks per second of /proc's CPU times.
fn ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Busy ticks of the whole machine (all CPUs; steal counted as busy).
fn machine_busy() -> u64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().next() else {
        return 0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let total: u64 = v.iter().take(8).sum();
    total.saturating_sub(v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0))
}

/// User + system ticks of a process (0 if it is gone).
fn process_ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name is in parentheses and may hold spaces: fields count from after ')'.
    let Some((_, rest)) = text.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, utime 14, stime 15 (1-based in proc(5)).
    let get = |i: usize| {
        f.get(i - 3)
            .and_then(|x| x.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(14) + get(15)
}

/// A snapshot of the machine's and some processes' CPU times.
#[derive(Debug, Clone)]
pub struct Sample {
    at: std::time::Instant,
    machine: u64,
    this: u64,
    pids: u64,
}

/// Cores kept busy between two samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// This process (the in-process cloud, the raw receiver, the latency collector).
    pub this: f64,
    /// The processes named in the later sample (a process started in between counts from 0).
    pub pids: f64,
    /// Everything else on the machine.
    pub others: f64,
}

impl Sample {
    /// Takes a snapshot; `pids` are the benchmark's processes besides this one.
    pub fn take(pids: &[u32]) -> Sample {
        Sample {
            at: std::time::Instant::now(),
            machine: machine_busy(),
            this: process_ticks(std::process::id()),
            pids: pids.iter().map(|p| process_ticks(*p)).sum(),
        }
    }

    /// The cores kept busy between `self` and `later`.
    pub fn usage_since(&self, later: &Sample) -> Usage {
        let secs = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let cores = |ticks: u64| ticks as f64 / ticks_per_s() / secs;
        let this = later.this.saturating_sub(self.this);
        let pids = later.pids.saturating_sub(self.pids);
        let machine = later.machine.saturating_sub(self.machine);
        Usage {
            this: cores(this),
            pids: cores(pids),
            others: cores(machine.saturating_sub(this + pids)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let a = Sample::take(&[]);
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        let b = Sample::take(&[]);
        let u = a.usage_since(&b);
        assert!(u.this > 0.0, "{u:?}");
        assert!(u.others >= 0.0 && u.pids == 0.0, "{u:?}");
    }
}
